"""Writes OUTDIR/report.md and OUTDIR/report.json from what benchmarks/gpu_validate.sh left in OUTDIR:
steps.tsv (one line per step), logs/<step>.out|.err, junit.xml (pytest) and <bench step>.json.

    python benchmarks/gpu_report.py OUTDIR
"""
import csv
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

TAIL_LINES = 30


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def tail(text, lines=TAIL_LINES):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def junit_summary(path):
    """Test counts from pytest's junit xml, or None when there is none."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    counts["time_s"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    counts["failed_tests"] = failed
    return counts


def sanitizer_summary(text):
    lines = [ln.strip() for ln in text.splitlines() if re.search(r"(ERROR|RACECHECK|HAZARD) SUMMARY", ln)]
    return lines[-1] if lines else None


def main(out):
    steps = []
    with open(os.path.join(out, "steps.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            name = row["name"]
            row["stdout_tail"] = tail(read(os.path.join(out, "logs", f"{name}.out")))
            row["stderr_tail"] = tail(read(os.path.join(out, "logs", f"{name}.err")))
            steps.append(row)
    by_name = {s["name"]: s for s in steps}
    report = {
        "outdir": out,
        "environment": read(os.path.join(out, "logs", "environment.out")).strip(),
        "steps": steps,
        "pytest": junit_summary(os.path.join(out, "junit.xml")),
        "sanitizers": {},
        "benchmarks": {},
    }
    for tool in ("memcheck", "racecheck"):
        if tool in by_name:
            s = by_name[tool]
            report["sanitizers"][tool] = {"status": s["status"], "rc": s["rc"],
                                          "summary": sanitizer_summary(read(os.path.join(out, "logs", f"{tool}.out"))
                                                                       + read(os.path.join(out, "logs", f"{tool}.err")))}
    for s in steps:
        if s["name"].startswith("bench-"):
            data = None
            with_json = os.path.join(out, f"{s['name']}.json")
            if os.path.exists(with_json):
                try:
                    with open(with_json, encoding="utf-8") as f:
                        data = json.load(f)
                except (OSError, ValueError):
                    data = None
            report["benchmarks"][s["name"]] = {"status": s["status"], "table": read(os.path.join(out, "logs", f"{s['name']}.out")),
                                               "json_file": os.path.basename(with_json) if data else None}

    md = ["# nin_ext GPU validation", ""]
    md += ["## Environment", "", "```", report["environment"] or "(no environment log)", "```", ""]
    md += ["## Steps", "", "| step | status | rc | seconds | limit s |", "|---|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {s['rc']} | {s['seconds']} | {s['limit_s']} |" for s in steps]
    md.append("")
    if "build" in by_name:
        md += ["## Build (log tail)", "", "```", tail(by_name["build"]["stdout_tail"] + "\n" + by_name["build"]["stderr_tail"], 15), "```", ""]
    md += ["## Tests", ""]
    pt = report["pytest"]
    if pt:
        md.append(f"{pt['tests']} tests, {pt['failures']} failures, {pt['errors']} errors, {pt['skipped']} skipped, "
                  f"{pt['time_s']} s")
        md += [f"- FAILED {t}" for t in pt["failed_tests"][:100]]
    else:
        md.append("(no junit xml: pytest did not run to the end)")
    if "pytest" in by_name:
        md += ["", "```", tail(by_name["pytest"]["stdout_tail"], 25), "```"]
    md += ["", "## Sanitizers", ""]
    for tool, s in report["sanitizers"].items():
        md.append(f"- {tool}: {s['status']} (rc {s['rc']}): {s['summary'] or 'no summary line'}")
    if not report["sanitizers"]:
        md.append("(not run)")
    md += ["", "## Benchmarks", ""]
    for name, b in report["benchmarks"].items():
        md += [f"### {name} ({b['status']})", "", "```", b["table"].rstrip() or "(no table)", "```", ""]
    failed = [s for s in steps if s["status"] != "ok"]
    if failed:
        md += ["## Steps that did not pass (stderr tail)", ""]
        for s in failed:
            md += [f"### {s['name']}: {s['status']}", "", "```", s["stderr_tail"] or s["stdout_tail"] or "(no output)", "```", ""]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.join(out, 'report.md')} and report.json")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
