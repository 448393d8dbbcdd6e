#!/bin/bash
# queue A of the issue-8 runs (one core, one torch thread each)
cd /work/main
export EDGESPIKE_DATA=/work/shared/data
T="python tools/train_method.py"
O="--threads 1 --no-progress"
run() { name=$1; shift; echo "$(date +%T) start $name" >> runs/methods/queue.log; $T "$@" $O --out runs/methods/$name.esnn > runs/methods/$name.stdout 2>&1; echo "$(date +%T) end $name rc=$?" >> runs/methods/queue.log; }
while pgrep -f "out runs/methods/if_direct_t8.esnn" > /dev/null; do sleep 20; done
run lif_direct_t8 coding --neuron lif --leak-shift 2 --encoder direct --T 8 --ann-minutes 14 --minutes 14
run if_rate_t8 coding --neuron if --encoder rate --T 8 --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1 --minutes 10
run if_direct_t4 coding --neuron if --encoder direct --T 4 --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1
run lif_direct_t4 coding --neuron lif --leak-shift 2 --encoder direct --T 4 --init runs/methods/lif_direct_t8.ckpt.pt --skip-phases 1
run if_direct_t16_conv coding --neuron if --encoder direct --T 16 --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1
run if_rate_t32_conv coding --neuron if --encoder rate --T 32 --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1
run if_rate_t64_conv coding --neuron if --encoder rate --T 64 --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1
run vtsnn_itbp vtsnn --loss itbp --width 16 --minutes 15 --lr 3e-4
run vtsnn_stbp vtsnn --loss stbp --width 16 --minutes 15 --lr 3e-4
echo "$(date +%T) queue A done" >> runs/methods/queue.log
