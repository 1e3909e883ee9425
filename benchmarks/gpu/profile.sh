# One device call (~3.5 min on an H100): where the ResNet-50 bf16 step's time goes, per op, for
# SimCLR and BYOL at batch 256 (benchmarks/profile_step.py; command buffers off for attribution).
# The summaries, the HLO and the traces come back in $OUT.
#   run(command="bash benchmarks/gpu/profile.sh", carry=[".whl"], timeout_s=420)
source benchmarks/gpu/setup.sh
for method in simclr byol; do
  timeout 180 python3 benchmarks/profile_step.py --model resnet50 --dtype bfloat16 --batch 256 \
    --method $method --steps 3 --top 40 --trace-dir /tmp/prof_$method \
    --hlo-out $OUT/hlo_r50_$method.txt.gz 2>&1 \
    | tee $OUT/profile_r50_$method.log
done
for method in simclr byol; do  # with the HLO: `profile_step.py --from-trace` redoes a summary
  f=$(find /tmp/prof_$method -name '*.trace.json.gz' | head -1)
  [ -n "$f" ] && cp "$f" $OUT/profile_r50_$method.trace.json.gz
done
