"""Run by test_ddp under torchrun: ``OUT ITERS [STOP_AT] [resume]`` trains a tiny config with
drop path (each rank draws its own masks), stopping at or resuming from a checkpoint."""
import sys

from semask.train.config import load_config
from semask.train.trainer import train

out, iters = sys.argv[1], int(sys.argv[2])
stop_at = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
cfg = load_config(None, variant="micro", head_channels=8, crop_size=[64, 64], img_scale=[96, 64],
                  synthetic_size=[64, 80], synthetic_train_size=16, synthetic_val_size=2, batch_size=2,
                  iters=iters, warmup_iters=1, num_workers=0, progress=False, log_interval=1,
                  ckpt_interval=0, drop_path_rate=0.3, out_dir=out)
train(cfg, stop_at=stop_at, resume=out if sys.argv[-1] == "resume" else None)
