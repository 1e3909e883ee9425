# One device call (~7 min on an H100): ResNet-50 bf16 SimCLR + BYOL at batch 256 with the
# breakdown, then ResNet-18 (32 px) bf16 and float32 at batch 512. Logs come back in $OUT.
#   run(command="bash benchmarks/gpu/train_step.sh", carry=[".whl"], timeout_s=480)
source benchmarks/gpu/setup.sh
T0=$(date +%s)
timeout 330 python3 benchmarks/train_step.py --models resnet50 --dtypes bfloat16 --batches 256 \
  --breakdown-batch 256 2>&1 | tee $OUT/train_step_r50.log
timeout $(( 440 - ($(date +%s) - T0) )) python3 benchmarks/train_step.py --models resnet18 \
  --dtypes bfloat16,float32 --batches 512 --breakdown-batch 512 --methods simclr 2>&1 \
  | tee $OUT/train_step_r18.log
