"""Training-loop speed: the project's fastai loop (`dr_detection.train.make_learner`, one-cycle, callbacks, progress bar)
against a plain PyTorch loop, with the same model, batch size, image size, optimiser, schedule, loss and in-memory data.

    nice -n 10 .venv/bin/python benchmarks/train.py [--arch resnet18] [--size 128] [--bs 16] [--batches 6] [--rounds 2]

Only the training passes are timed (fastai's validation pass is left out through a callback). The two loops alternate
`--rounds` times and each keeps its best round, which damps the noise of a shared machine. Prints images/s of each and
the ratio fastai/plain last (target >= 0.95).
"""
import argparse, time, copy
import numpy as np
import torch
from torch import nn
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.callback.core import Callback
from fastai.torch_core import set_seed
from dr_detection.config import load_config
from dr_detection.train import build_model, make_learner, class_weights


class TrainTimer(Callback):
    "Seconds spent in the training passes (validation excluded)."
    order = 100
    def before_fit(self): self.secs = 0.
    def before_train(self): self.t0 = time.perf_counter()
    def after_train(self): self.secs += time.perf_counter() - self.t0


def fastai_run(model, cfg, x, y, bs, epochs):
    "Images/s of the project's Learner on in-memory tensors."
    dl_t = DataLoader(list(zip(x, y)), bs=bs, shuffle=True, drop_last=True)
    dl_v = DataLoader(list(zip(x[:bs], y[:bs])), bs=bs)
    learn = make_learner(DataLoaders(dl_t, dl_v, device='cpu'), cfg, y.tolist(), model=model)
    timer = TrainTimer()
    learn.fit_one_cycle(epochs, cfg.train.lr, cbs=[timer])
    return epochs * (len(x) // bs) * bs / timer.secs


def plain_run(model, cfg, x, y, bs, epochs):
    "Images/s of a plain PyTorch loop: same model, optimiser (Adam, decoupled weight decay), one-cycle schedule, weighted loss."
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=(0.9, 0.99), eps=1e-5)
    n_steps = len(x) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.train.lr, total_steps=epochs * n_steps)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(class_weights(y.tolist()), dtype=torch.float32))
    secs = 0.
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(n_steps):
            idx = perm[i * bs:(i + 1) * bs]
            xb, yb = x[idx], y[idx]
            loss = loss_fn(model(xb), yb)
            loss.backward(); opt.step(); opt.zero_grad(); sched.step()
        secs += time.perf_counter() - t0
    return epochs * n_steps * bs / secs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet18'); p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=16); p.add_argument('--batches', type=int, default=6)
    p.add_argument('--epochs', type=int, default=1); p.add_argument('--rounds', type=int, default=2)
    a = p.parse_args(argv)
    cfg = load_config(None, overrides={'train.arch': a.arch, 'preprocess.size': a.size, 'train.batch_size': a.bs})
    set_seed(0)
    n = a.bs * a.batches
    x = torch.randn(n, 3, a.size, a.size)  # already normalised, in memory
    y = torch.tensor(np.arange(n) % 4 == 0, dtype=torch.long)  # 1 in 4 positive, like an imbalanced screening set
    base = build_model(a.arch, pretrained=False, dropout=cfg.train.dropout)
    print(f"{a.arch}, {a.size}px, batch {a.bs}, {a.batches} batches x {a.epochs} epoch(s), {a.rounds} rounds, torch threads {torch.get_num_threads()}")
    # warm-up (allocator, oneDNN kernels) for both, then alternate
    plain_run(copy.deepcopy(base), cfg, x[:a.bs * 2], y[:a.bs * 2], a.bs, 1)
    res = {'fastai': [], 'plain': []}
    for r in range(a.rounds):
        for name, fn in (('plain', plain_run), ('fastai', fastai_run)):
            set_seed(r)
            res[name].append(fn(copy.deepcopy(base), cfg, x, y, a.bs, a.epochs))
            print(f"round {r}: {name:6s} {res[name][-1]:6.1f} images/s", flush=True)
    f, pl = max(res['fastai']), max(res['plain'])
    print(f"fastai loop: {f:.1f} images/s   plain PyTorch loop: {pl:.1f} images/s")
    print(f"ratio fastai/plain: {f / pl:.3f}")


if __name__ == '__main__': main()
