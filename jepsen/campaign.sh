#!/usr/bin/env bash
# The fault campaign behind JEPSEN.md: one `ordo-jepsen run` per seed, rotating through every
# workload and nemesis (with W workloads and N nemeses, seed s runs WORKLOADS[s % W] under
# NEMESES[(s / W) % N]), one line per run in $OUT/campaign.tsv. Needs root and iptables for the
# partition nemesis.
#
#   cargo build --release --bin ordo --bin ordo-jepsen
#   jepsen/campaign.sh                      # seeds 1-100, 60 s each, 5 nodes
#   FIRST=1 LAST=24 TIME=30 jepsen/campaign.sh
#   WORKLOADS=inventory FIRST=1 LAST=12 TIME=40 jepsen/campaign.sh   # one workload, every nemesis
#   WORKLOADS=watch FIRST=1 LAST=6 TIME=30 jepsen/campaign.sh         # change-feed consumers
#   NEMESES="hostile,partition hostile,kill hostile,pause hostile,clock hostile,membership hostile" \
#     WORKLOADS="inventory watch" SERVER_ARGS="--message-bytes-max 65536 --watch-stall-ms 1000" \
#     NODES=3 TIME=40 FIRST=1 LAST=12 jepsen/campaign.sh   # hostile clients beside each fault
#   SERVER_ARGS="--snapshot-every 100" RATE=200 CONCURRENCY=10 WORKLOADS=watch FIRST=1 LAST=12 \
#     TIME=30 jepsen/campaign.sh            # nodes behind install snapshots; feeds start after them
#   CA=certs/ca.pem SERVER_ARGS="--tls-cert certs/node-1.pem --tls-key certs/node-1-key.pem" \
#     jepsen/campaign.sh                    # clients over TLS (JEPSEN.md, "Reproduce")
#
# The `feed` column (watch runs): events the consumers received in all, their node switches
# (stream errors, of them RESOURCE_EXHAUSTED cut-offs of the dawdling consumer; stalls, stale
# nodes, OUT_OF_RANGE), the reference's events and OUT_OF_RANGE answers, and the nodes whose
# feed started after epoch 1 at the end (they installed a snapshot).
set -uo pipefail

FIRST="${FIRST:-1}"
LAST="${LAST:-100}"
TIME="${TIME:-60}"
NODES="${NODES:-5}"
RATE="${RATE:-50}"
CONCURRENCY="${CONCURRENCY:-5}"
BIN="${BIN:-target/release}"
OUT="${OUT:-jepsen-campaign}"
read -r -a WORKLOADS <<< "${WORKLOADS:-inventory bank append register}"
# Extra arguments for every `ordo server`, split on spaces.
read -r -a SERVER_ARGS <<< "${SERVER_ARGS:-}"
server_args=()
for a in "${SERVER_ARGS[@]}"; do server_args+=("--server-arg=$a"); done
# The CA of the nodes' client-port certificates (their --tls-cert/--tls-key in SERVER_ARGS):
# clients then use https://.
[ -n "${CA:-}" ] && server_args+=("--ca" "$CA")
# Space-separated; a comma joins nemeses into one run's rotation.
read -r -a NEMESES <<< "${NEMESES:-partition kill pause clock membership partition,kill,pause,clock,membership}"

mkdir -p "$OUT"
tsv="$OUT/campaign.tsv"
[ -s "$tsv" ] || printf 'seed\tworkload\tnemesis\texit\tvalid\tok\tfail\tinfo\tanomalies\tdir\tfeed\n' > "$tsv"
for seed in $(seq "$FIRST" "$LAST"); do
  w="${WORKLOADS[$((seed % ${#WORKLOADS[@]}))]}"
  n="${NEMESES[$(((seed / ${#WORKLOADS[@]}) % ${#NEMESES[@]}))]}"
  log="$OUT/seed-$seed.out"
  "$BIN/ordo-jepsen" run --ordo-bin "$BIN/ordo" --nodes "$NODES" --time-limit "$TIME" \
    --workload "$w" --nemesis "$n" --rate "$RATE" --concurrency "$CONCURRENCY" --seed "$seed" --out "$OUT/runs" \
    "${server_args[@]}" > "$log" 2>&1
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
s = r.get("checker_stats", {})
feed = "-"
if "watch-events" in s:
    consumers = sorted({k.split("-")[2] for k in s if k.startswith("watch-consumer-")})
    total = lambda what: sum(s.get(f"watch-consumer-{c}-{what}", 0) for c in consumers)
    feed = (f"events={s['watch-events']} switches={total('switches')} errors={total('errors')} "
            f"cut-off={total('cut-off')} stalls={total('stalls')} stale={total('stale')} "
            f"oor={total('out-of-range')} reference={s.get('watch-reference-events', 0)} "
            f"reference-oor={s.get('watch-reference-out-of-range', 0)} "
            f"snapshot-nodes={s.get('watch-nodes-feed-after-snapshot', 0)}")
print("\t".join(str(x) for x in [json.dumps(r["valid"]), tot["ok"], tot["fail"], tot["info"],
                                 json.dumps(r["anomaly_counts"], separators=(",", ":")), feed]))
EOF
)"
  else
    row=$'-\t-\t-\t-\t-\t-'
  fi
  # The feed column last, after the run directory (older campaign.tsv files end at dir).
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$seed" "$w" "$n" "$code" "${row%$'\t'*}" "${dir:--}" \
    "${row##*$'\t'}" >> "$tsv"
  echo "seed $seed: $w / $n: exit $code"
done
echo
echo "runs: $(tail -n +2 "$tsv" | wc -l)"
echo "exit codes: $(tail -n +2 "$tsv" | cut -f4 | sort | uniq -c | tr '\n' ' ')"
