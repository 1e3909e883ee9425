# One device call (~8 min on an H100/H200): ssl_jax's bf16 train steps of MoCo v3 ViT-B/16
# (batch 256; ready-made views and uint8 + on-device augmentation), DINO ViT-S/16 (batch 128,
# 2x224 + 10x96 crops), SimCLR and BYOL ResNet-50 (batch 256, ready-made views), then, as time
# allows, MoCo v3 ViT-S/16, DINO ViT-B/16 and the ResNet-50 steps with augmentation; beside them,
# in the same process, the PyTorch peers (torch.compile, bf16 autocast): timm ViT-B MoCo v3,
# torchvision ResNet-50 SimCLR and BYOL on the same views. images/s, TFLOP/step, MFU vs the data
# sheet and vs a measured 8192^3 bf16 matmul (benchmarks/vit_throughput.py). The log and
# vit_throughput.json (written after every group) come back in $OUT.
#   run(command="bash benchmarks/gpu/vit_throughput.sh", carry=[".whl"], timeout_s=540)
# The script starts no group it expects to end past 450 s (--budget-s) and is killed at 490 s.
# VIT_GROUPS=a,b runs only those groups (names: GROUPS in the script), e.g. the tail skipped:
#   VIT_GROUPS=moco_vits,dino_vitb,simclr_r50_aug,byol_r50_aug bash benchmarks/gpu/vit_throughput.sh
source benchmarks/gpu/setup.sh
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)" \
  || echo "PyTorch not importable: ssl_jax rows only"
timeout 490 python3 benchmarks/vit_throughput.py --budget-s 450 --out $OUT \
  ${VIT_GROUPS:+--groups $VIT_GROUPS} 2>&1 | tee $OUT/vit_throughput.log
