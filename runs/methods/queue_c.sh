#!/bin/bash
# queue C: the LIF baseline again, after the fix to its threshold balancing (layer by layer, 95 % quantile);
# the same iteration counts as the IF run it is compared with (585 rate-aware ANN + 270 BPTT iterations)
cd /work/main
export EDGESPIKE_DATA=/work/shared/data
T="python tools/train_method.py"
O="--threads 1 --no-progress"
run() { name=$1; shift; echo "$(date +%T) start $name" >> runs/methods/queue.log; $T "$@" $O --out runs/methods/$name.esnn > runs/methods/$name.stdout 2>&1; echo "$(date +%T) end $name rc=$?" >> runs/methods/queue.log; }
rm -f runs/methods/lif_direct_t8.ckpt.pt
run lif_direct_t8 coding --neuron lif --leak-shift 2 --encoder direct --T 8 --ann-iters 585 --iters 270
while pgrep -f queue_a.sh > /dev/null; do sleep 20; done
run lif_direct_t4 coding --neuron lif --leak-shift 2 --encoder direct --T 4 --init runs/methods/lif_direct_t8.ckpt.pt --skip-phases 1
echo "$(date +%T) queue C done" >> runs/methods/queue.log
