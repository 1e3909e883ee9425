# One device call (~9 min on an H100): both full-size Fashion-MNIST recipes side by side on the
# one GPU, each pretraining 150 epochs then evaluating; results come back as tars in $OUT.
#   run(command="bash benchmarks/gpu/fmnist_full.sh", carry=[".whl", ".gpudata"], timeout_s=600)
# FULL_ARGS: extra flags for both pretraining runs, e.g.
#   FULL_ARGS='--config.model.convnet.features=(64,128,256,512)' bash benchmarks/gpu/fmnist_full.sh
# NOPLOTS=1 evaluates without the pictures (saves ~70 s of the call).
source benchmarks/gpu/setup.sh
T0=$(date +%s)
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.4  # two processes share the GPU
python3 -c "from ssl_jax.data.fashion_mnist import prepare_fashion_mnist as p; print(p())"
for m in simclr byol; do
  (timeout 570 python3 -m ssl_jax pretrain --config configs/${m}_fashion_mnist.py:full \
     --workdir /tmp/runs/$m ${NOPLOTS:+--config.eval_at_end=False} ${FULL_ARGS:-} \
     > $OUT/${m}_full.log 2>&1
   if [ -n "${NOPLOTS:-}" ]; then
     timeout $(( 585 - ($(date +%s) - T0) )) python3 -m ssl_jax evaluate --workdir /tmp/runs/$m \
       --noplots >> $OUT/${m}_full.log 2>&1
   fi
   echo "$m rc=$? at $(( $(date +%s) - T0 )) s" >> $OUT/${m}_full.log) &
done
wait
for m in simclr byol; do
  (cd /tmp/runs/$m && tar cf $OUT/${m}_full.tar --exclude=checkpoints --exclude='*tfevents*' .)
done
grep -hE "rc=|evaluated in" $OUT/*_full.log
cat /tmp/runs/simclr/eval.md /tmp/runs/byol/eval.md
