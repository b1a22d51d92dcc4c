"""Compare two `python -m nin_ext bench --json FILE` results stage by stage.

    python benchmarks/compare.py OLD.json NEW.json [--column nin_ext]

Prints, per stage, the median of the chosen column in both files and NEW's speedup over OLD
(old median / new median), with each run's spread (half IQR) so a change inside the noise is visible.
Both files should come from the same machine, batch and dtype; the script says when they do not.
"""
import argparse
import json
import sys


def _load(path):
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--column", default="nin_ext", help="eager, compile, nin_ext or nin_ext[BACKEND]")
    a = p.parse_args(argv)
    old, new = _load(a.old), _load(a.new)
    for key in ("device", "batch", "dtype", "threads"):
        if old["config"].get(key) != new["config"].get(key):
            print(f"note: {key} differs: {old['config'].get(key)} vs {new['config'].get(key)}", file=sys.stderr)
    m_old, m_new = old["meta"]["machine"], new["meta"]["machine"]
    if (m_old.get("gpu") or m_old.get("cpu")) != (m_new.get("gpu") or m_new.get("cpu")):
        print("note: the machines differ", file=sys.stderr)
    print(f"{a.column}: {a.old} ({old['meta'].get('commit')}) -> {a.new} ({new['meta'].get('commit')})")
    rows = [("stage", "old ms", "new ms", "speedup")]
    for stage in new["config"]["stages"]:
        o = (old["stages"].get(stage) or {}).get(a.column) or {}
        n = (new["stages"].get(stage) or {}).get(a.column) or {}
        so, sn = o.get("stats"), n.get("stats")

        def cell(st):
            if not st:
                return "-"
            return f"{st['median_ms']:.2f} ±{(st['q3_ms'] - st['q1_ms']) / 2:.2f}"

        sp = f"{so['median_ms'] / sn['median_ms']:.2f}x" if so and sn else ""
        rows.append((stage, cell(so), cell(sn), sp))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join([r[0].ljust(w[0])] + [c.rjust(x) for c, x in zip(r[1:], w[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
