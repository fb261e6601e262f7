#!/usr/bin/env bash
# eval.sh: the thesis's evaluation (section 5) on detux, against pthreads.
#
#   scripts/eval.sh [--quick | --full] [--build DIR] [--out DIR] [--repeats R]
#
# Runs md5, qsort, matmult and lu (bench/eval) at the thesis's sizes, each
# for N = 1 .. nproc CPUs (taskset -c 0..N-1), detux versions through
# `detux run`, pthreads twins directly, R times each (default 3, --quick 2),
# and prints one line per run as it goes.  --quick is a small subset that
# takes a few minutes on 2 cores; --full runs every size (matrices 16^2 ..
# 2048^2, qsort 1K .. 80M keys) and takes hours.  Writes into the output
# directory (default eval-out):
#   runs.csv     every run: bench,backend,size,N,R,rep,time_s,merge_s,verify,digest
#   tables.md    Tables 4 and 5: detux time / pthreads time (median of the
#                runs), the share of detux's time spent merging in
#                parentheses; whether detux's digests were all identical;
#                and the case study of section 5.2 (scripts/gauss-case-study.sh)
#   speedup.png  Figure 4: speedup over 1-CPU pthreads against N, drawn by gnuplot
# Exit status 1 if any run failed its check or detux's digests differed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mode=quick build=$here/../build out=eval-out repeats=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --repeats) repeats=$2; shift ;;
    *) echo "usage: $0 [--quick|--full] [--build DIR] [--out DIR] [--repeats R]" >&2; exit 2 ;;
  esac
  shift
done
bin=$build/bench/eval
detux=$build/tools/detux
cpus=$(nproc)
mkdir -p "$out"

# bench:size:R (R = repetitions inside one process, so that small sizes run
# long enough to time; the mean per repetition is reported).
if [ "$mode" = quick ]; then
  repeats=${repeats:-2}
  plan=(md5:4:4 md5:5:1
        qsort:1000:20 qsort:1000000:2 qsort:10000000:1
        matmult:16:20 matmult:128:5 matmult:512:1 matmult:1024:1
        lu:16:1 lu:128:1 lu:512:1 lu:2048:1)
  case_runs=30
else
  repeats=${repeats:-3}
  plan=(md5:4:4 md5:5:1 md5:6:1)
  for s in 1000 10000 100000 1000000 10000000 80000000; do plan+=("qsort:$s:$(( s < 1000000 ? 20 : 1 ))"); done
  for s in 16 32 64 128 256 512 1024 2048; do plan+=("matmult:$s:$(( s < 256 ? 10 : 1 ))"); done
  for s in 16 32 64 128 256 512 1024 2048; do plan+=("lu:$s:$(( s < 256 ? 2 : 1 ))"); done
  case_runs=100
fi

csv=$out/runs.csv
echo "bench,backend,size,N,R,rep,time_s,merge_s,verify,digest" > "$csv"
total=$(( ${#plan[@]} * cpus * repeats * 2 ))
done_runs=0
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }
for entry in "${plan[@]}"; do
  IFS=: read -r bench size rep <<<"$entry"
  for n in $(seq 1 "$cpus"); do
    for r in $(seq 1 "$repeats"); do
      for backend in detux pthreads; do
        cmd=("$bin/${bench}_$backend" --size "$size" --threads "$n" --repeat "$rep")
        [ "$backend" = detux ] && cmd=("$detux" run -- "${cmd[@]}")
        line=$(taskset -c "0-$((n - 1))" "${cmd[@]}" 2>&1 | tail -1) || true
        done_runs=$((done_runs + 1))
        t=$(field time_s "$line"); m=$(field merge_s "$line")
        v=$(field verify "$line"); d=$(field digest "$line")
        [ -n "$v" ] || { v=ERROR; echo "  $line" >&2; }
        echo "$bench,$backend,$size,$n,$rep,$r,${t:-0},${m:-0},$v,${d:-none}" >> "$csv"
        printf '[%d/%d] %-7s n=%-9s N=%d %-8s rep %d: %ss (merge %ss) %s\n' \
          "$done_runs" "$total" "$bench" "$size" "$n" "$backend" "$r" "${t:-?}" "${m:-?}" "$v"
      done
    done
  done
done

echo "case study: gauss, $case_runs runs of each version"
case_out=$("$here/gauss-case-study.sh" "$build" "$case_runs" || true)
echo "$case_out"

# Tables: medians per bench,size,N,backend; then one row per bench,size,N.
awk -F, -v cpus="$cpus" -v case_out="$case_out" -v mode="$mode" -v reps="$repeats" '
  function median(list,   v, k, i, j, t) {
    k = split(list, v, " ")
    for (i = 2; i <= k; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  NR == 1 { next }
  {
    key = $1 SUBSEP $3 SUBSEP $4
    if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
    times[key, $2] = times[key, $2] " " $7
    if ($2 == "detux") merges[key] = merges[key] " " $8
    if ($9 != "ok") bad[$1 SUBSEP $3] = 1
    if ($2 == "detux") {
      dk = $1 SUBSEP $3
      if (!(dk in digest)) digest[dk] = $10; else if (digest[dk] != $10) differ[dk] = 1
    }
  }
  function table(title, names,   i, k, p, b, s, n, td, tp, mg, dk) {
    print "### " title "\n"
    print "| benchmark | size | N | detux s | pthreads s | detux / pthreads (merging) | checks | detux digest |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nk; i++) {
      split(order[i], p, SUBSEP); b = p[1]; s = p[2]; n = p[3]
      if (index(names, " " b " ") == 0) continue
      td = median(times[order[i], "detux"]); tp = median(times[order[i], "pthreads"])
      mg = median(merges[order[i]]); dk = b SUBSEP s
      printf "| %s | %s | %s | %.4g | %.4g | **%.2f** (%.0f%%) | %s | %s |\n", b, s, n, td, tp, \
        (tp > 0 ? td / tp : 0), (td > 0 ? 100 * mg / td : 0), (dk in bad ? "FAILED" : "ok"), \
        (dk in differ ? "DIFFER" : "identical")
    }
    print ""
  }
  END {
    print "# detux against pthreads (scripts/eval.sh --" mode ")\n"
    print "Median of " reps " runs each, on N of the machine'"'"'s " cpus " CPUs (taskset).  The ratio is detux time / pthreads time; in parentheses, the share of detux'"'"'s time the master spent in djoin after the child had stopped (merging and tearing down).  \"identical\": every detux run of that size, at every N, printed the same digest.\n"
    table("Table 4: matrix benchmarks", " matmult lu ")
    table("Table 5: qsort and md5", " qsort md5 ")
    print "### The case study (section 5.2): Gaussian elimination with a missing join\n"
    print "```"; print case_out; print "```"
  }' "$csv" > "$out/tables.md"

# Figure 4: speedup over 1-CPU pthreads at the largest size of each benchmark.
awk -F, 'NR > 1 { if ($3 + 0 > big[$1]) big[$1] = $3 + 0; t[$1, $3, $4, $2] += $7; c[$1, $3, $4, $2]++ }
  END { for (k in t) { split(k, p, SUBSEP); if (p[2] + 0 == big[p[1]]) print p[1], p[2], p[3], p[4], t[k] / c[k] } }' "$csv" |
  sort -k1,1 -k4,4 -k3,3n > "$out/speedup.dat"
plots=""
for b in md5 qsort matmult lu; do
  for be in detux pthreads; do
    awk -v b="$b" -v be="$be" '$1 == b && $4 == "pthreads" && $3 == 1 { base = $5 } { row[NR] = $0 }
      END { for (i = 1; i <= NR; i++) { split(row[i], f, " "); if (f[1] == b && f[4] == be && base > 0) print f[3], base / f[5] } }' \
      "$out/speedup.dat" > "$out/speedup-$b-$be.dat"
    [ -s "$out/speedup-$b-$be.dat" ] && plots+="${plots:+, }'$out/speedup-$b-$be.dat' with linespoints title '$b ($be)'"
  done
done
if command -v gnuplot > /dev/null && [ -n "$plots" ]; then
  gnuplot -e "set terminal png size 800,560; set output '$out/speedup.png';
    set title 'Figure 4: speedup over 1-CPU pthreads (largest size of each)';
    set xlabel 'CPUs (N)'; set ylabel 'speedup'; set xtics 1; set key left top;
    set xrange [0.8:$cpus.2]; set yrange [0:*];
    plot $plots, x with lines dashtype 2 title 'ideal'"
fi
echo "wrote $csv, $out/tables.md, $out/speedup.png"
! grep -q "FAILED\|DIFFER" "$out/tables.md"
