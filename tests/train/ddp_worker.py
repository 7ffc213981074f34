"""Run by test_ddp under torchrun: train a tiny config, then dump this rank's weights."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

import semask.train.trainer as trainer
from semask.train.config import load_config

out = Path(sys.argv[1])
cfg = load_config(None, variant="micro", head_channels=8, crop_size=[64, 64], img_scale=[96, 64],
                  synthetic_size=[64, 80], synthetic_train_size=16, synthetic_val_size=3, batch_size=2, iters=3,
                  warmup_iters=1, num_workers=0, progress=False, log_interval=1, ckpt_interval=0,
                  out_dir=str(out))
captured = {}
real_cleanup = trainer.distributed.cleanup


def keep_model(info):  # grab the weights before the process group goes away
    captured["world"], captured["rank"] = dist.get_world_size(), dist.get_rank()
    real_cleanup(info)


trainer.distributed.cleanup = keep_model
real_eval = trainer.evaluate


def eval_and_keep(model, *args, **kwargs):
    captured["state"] = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return real_eval(model, *args, **kwargs)


trainer.evaluate = eval_and_keep
res = trainer.train(cfg)
save_file(captured["state"], str(out / f"rank{captured['rank']}.safetensors"))
(out / f"rank{captured['rank']}.txt").write_text(f"{captured['world']} {res['pixels']}")
