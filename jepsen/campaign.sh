#!/usr/bin/env bash
# The fault campaign behind JEPSEN.md: one `ordo-jepsen run` per seed, rotating through every
# workload and nemesis (with W workloads, seed s runs WORKLOADS[s % W] under
# NEMESES[(s / W) % 6]), one line per run in $OUT/campaign.tsv. Needs root and iptables for the
# partition nemesis.
#
#   cargo build --release --bin ordo --bin ordo-jepsen
#   jepsen/campaign.sh                      # seeds 1-100, 60 s each, 5 nodes
#   FIRST=1 LAST=24 TIME=30 jepsen/campaign.sh
#   WORKLOADS=inventory FIRST=1 LAST=12 TIME=40 jepsen/campaign.sh   # one workload, every nemesis
set -uo pipefail

FIRST="${FIRST:-1}"
LAST="${LAST:-100}"
TIME="${TIME:-60}"
NODES="${NODES:-5}"
BIN="${BIN:-target/release}"
OUT="${OUT:-jepsen-campaign}"
read -r -a WORKLOADS <<< "${WORKLOADS:-inventory bank append register}"
NEMESES=(partition kill pause clock membership partition,kill,pause,clock,membership)

mkdir -p "$OUT"
tsv="$OUT/campaign.tsv"
[ -s "$tsv" ] || printf 'seed\tworkload\tnemesis\texit\tvalid\tok\tfail\tinfo\tanomalies\tdir\n' > "$tsv"
for seed in $(seq "$FIRST" "$LAST"); do
  w="${WORKLOADS[$((seed % ${#WORKLOADS[@]}))]}"
  n="${NEMESES[$(((seed / ${#WORKLOADS[@]}) % 6))]}"
  log="$OUT/seed-$seed.out"
  "$BIN/ordo-jepsen" run --ordo-bin "$BIN/ordo" --nodes "$NODES" --time-limit "$TIME" \
    --workload "$w" --nemesis "$n" --rate 50 --concurrency 5 --seed "$seed" --out "$OUT/runs" \
    > "$log" 2>&1
  code=$?
  dir="$(sed -n 's/^output in //p' "$log" | tail -1)"
  if [ -n "$dir" ] && [ -f "$dir/results.json" ]; then
    row="$(python3 - "$dir/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
tot = {"ok": 0, "fail": 0, "info": 0}
for f, counts in r["op_counts"].items():
    for k, v in counts.items():
        tot[k] += v
print("\t".join(str(x) for x in [json.dumps(r["valid"]), tot["ok"], tot["fail"], tot["info"],
                                 json.dumps(r["anomaly_counts"], separators=(",", ":"))]))
EOF
)"
  else
    row=$'-\t-\t-\t-\t-'
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$seed" "$w" "$n" "$code" "$row" "${dir:--}" >> "$tsv"
  echo "seed $seed: $w / $n: exit $code"
done
echo
echo "runs: $(tail -n +2 "$tsv" | wc -l)"
echo "exit codes: $(tail -n +2 "$tsv" | cut -f4 | sort | uniq -c | tr '\n' ' ')"
