#!/bin/bash
# queue B of the issue-8 runs (the other core, after the ULX3S build)
cd /work/main
export EDGESPIKE_DATA=/work/shared/data
T="python tools/train_method.py"
O="--threads 1 --no-progress"
run() { name=$1; shift; echo "$(date +%T) start $name" >> runs/methods/queue.log; $T "$@" $O --out runs/methods/$name.esnn > runs/methods/$name.stdout 2>&1; echo "$(date +%T) end $name rc=$?" >> runs/methods/queue.log; }
run sir_ann spikingir --T 10 --ann-minutes 15
run sir_conv_t10 spikingir --T 10 --no-mprn --no-recycle --init runs/methods/sir_ann.ckpt.pt --skip-phases 1
run sir_recycle_t10 spikingir --T 10 --no-mprn --init runs/methods/sir_ann.ckpt.pt --skip-phases 1
run sir_mprn_t4 spikingir --T 4 --init runs/methods/sir_ann.ckpt.pt --skip-phases 1
run sir_mprn_t15 spikingir --T 15 --init runs/methods/sir_ann.ckpt.pt --skip-phases 1
run sir_ft_t10 spikingir --T 10 --init runs/methods/sir_ann.ckpt.pt --skip-phases 1 --minutes 12 --batch 8 --patch 32
run spikerir_kd spikerir --minutes 12
run spikerir_nokd spikerir --distill 0 --minutes 12
run cae_t8 cae --T 8 --ann-minutes 8 --minutes 8
run if_speckle_t8 coding --neuron if --T 8 --noise speckle --init runs/methods/if_direct_t8.ckpt.pt --skip-phases 1 --minutes 10
echo "$(date +%T) queue B done" >> runs/methods/queue.log
