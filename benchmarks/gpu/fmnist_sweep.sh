# One device call: short Fashion-MNIST pretraining variants side by side on the one GPU, each
# scored by its linear probe at 1% and 10% of the labels (seeds 0 and 1), to pick which recipe
# change is worth a full-length run. Sourced AFTER another script in the same call, or alone:
#   run(command="bash benchmarks/gpu/fmnist_sweep.sh", carry=[".whl", ".gpudata"], timeout_s=420)
# SWEEP_EPOCHS (default 30) and SWEEP_SECONDS (default 330, the budget for the whole sweep).
[ -n "${PYTHONPATH:-}" ] || source benchmarks/gpu/setup.sh
EPOCHS=${SWEEP_EPOCHS:-30}
T_END=$(( $(date +%s) + ${SWEEP_SECONDS:-330} ))
STEPS=$(( EPOCHS * 60000 / 512 ))
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.2  # four processes share the GPU
python3 -c "from ssl_jax.data.fashion_mnist import prepare_fashion_mnist as p; p()"
# Edit to taste; the :full recipes' encoder is convnet 64-128-256-512 (grid 4).
declare -A VARIANT=(
  [simclr_narrow]="simclr --config.model.convnet.features=(32,64,128,256)"
  [simclr_full]="simclr"
  [simclr_wide4]="simclr --config.model.convnet.features=(128,256,512,1024)"
  [byol_full]="byol"
)
for name in "${!VARIANT[@]}"; do
  set -- ${VARIANT[$name]}
  method=$1; shift
  (timeout $(( T_END - $(date +%s) - 60 )) python3 -m ssl_jax pretrain \
     --config configs/${method}_fashion_mnist.py:full --workdir /tmp/sweep/$name \
     --config.total_steps=$STEPS --config.warmup_steps=$(( STEPS / 15 )) \
     --config.eval_at_end=False --config.eval_every=0 --config.checkpoint_every=0 "$@" \
     > $OUT/sweep_$name.log 2>&1
   for seed in 0 1; do
     timeout $(( T_END - $(date +%s) )) python3 -m ssl_jax evaluate --workdir /tmp/sweep/$name \
       --label_fractions=0.01,0.1 --representations=ssl --protocols=linear --noplots \
       --seed=$seed >> $OUT/sweep_$name.log 2>&1
   done
   echo "$name done" >> $OUT/sweep_$name.log) &
done
wait
for name in "${!VARIANT[@]}"; do
  echo "== $name: ${VARIANT[$name]} ($EPOCHS epochs)"
  grep -E "img/s" $OUT/sweep_$name.log | tail -2
  python3 -c "import json,sys; [print(r['protocol'], r['label_fraction'], 'seed', r['seed'], r['top1'])
for r in json.load(open(sys.argv[1]))]" /tmp/sweep/$name/eval.json
done
