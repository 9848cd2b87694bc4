#!/bin/sh
# Ops benchmarks, each against a baseline measured in the same run (quote ratios, not times):
#   1. static bash completion of one TAB press   vs  importing the CLI (typer; what a click/typer
#      callback completer pays on every TAB), and the dynamic `__complete projects` fast path
#   2. `cocalc-ctl metrics write` (the timers call it after every job)  vs  `cocalc-ctl config show`
#   3. `cocalc-ctl doctor`                        vs  `cocalc-ctl config show`
# The baseline of 2 and 3 is `config show` (loads typer and the config, does nothing else): since
# `--version` answers without importing typer it is no longer "a bare CLI start".
# Usage: benchmarks/ops/bench.sh [CONFIG]   (CONFIG: a host config for 2 and 3; skipped without one)
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
cli="$here/bin/cocalc-ctl"
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)"; exit 5; }
py="$here/.venv/bin/python"
[ -x "$py" ] || py=python3
"$py" -c "import sys; sys.path.insert(0, '$here/benchmarks'); from benchenv import print_environment; print_environment('$py')"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
comp="source $here/completions/cocalc-ctl.bash; COMP_WORDS=(cocalc-ctl --json snapshot p); COMP_CWORD=3; _cocalc_ctl"
hyperfine -N --warmup 3 --runs 30 --export-json "$out/comp.json" \
  "bash -c '$comp'" "$py -c 'import cocalc_ctl.cli.main'" "$cli __complete projects" >/dev/null
if [ $# -ge 1 ]; then
  mkdir -p "$out/tf"
  hyperfine -N --warmup 2 --runs 15 --export-json "$out/ops.json" \
    "$cli --config $1 config show" "$cli --config $1 metrics write --textfile-dir $out/tf" \
    "$cli --config $1 doctor" >/dev/null || true
fi
python3 - "$out" <<'PY'
import json, os, sys
d = sys.argv[1]
def med(path):
    return [(r["command"], r["median"]) for r in json.load(open(path))["results"]]
(c1, m1), (c2, m2), (c3, m3) = med(os.path.join(d, "comp.json"))
print(f"static bash completion: median {m1*1000:.1f} ms; importing the typer CLI: {m2*1000:.1f} ms; ratio {m2/m1:.1f}x faster")
print(f"dynamic __complete projects (typer-free fast path): median {m3*1000:.1f} ms = {m3/m2:.2f}x importing the CLI")
p = os.path.join(d, "ops.json")
if os.path.exists(p):
    (cv, mv), (cm, mm), (cd, md) = med(p)
    print(f"metrics write: median {mm*1000:.0f} ms = {mm/mv:.2f}x `config show` ({mv*1000:.0f} ms)")
    print(f"doctor:        median {md*1000:.0f} ms = {md/mv:.2f}x `config show`")
PY
