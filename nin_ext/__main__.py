"""``python -m nin_ext {shapes,info,bench}``: see :mod:`nin_ext.cli`."""

from nin_ext.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
