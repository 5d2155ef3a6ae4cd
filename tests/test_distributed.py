"Stage 03 in two processes under `accelerate launch` on the CPU (gloo), against one process (issue 13 item 1)."
import json, math, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score
from dr_detection.config import load_config
from dr_detection.data import build_upstream, read_table
from dr_detection.train import load_torch_model, onnx_parity, training_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    "Stages 00-02 of a small demo config (32 synthetic patients, 64 px), and that config."
    d = tmp_path_factory.mktemp('ddp')
    raw = yaml.safe_load((ROOT/'configs/smoke.yaml').read_text())
    raw['data']['demo_patients'] = 32; raw['train'].update(epochs=2, batch_size=8)
    cfg = d/'ddp.yaml'; cfg.write_text(yaml.safe_dump(raw))
    build_upstream(d/'run', '03', load_config(cfg))
    return d/'run', cfg


def _train(src, dst, cfg, processes):
    shutil.copytree(src, dst)
    before = {p.name for p in dst.iterdir()}
    r = subprocess.run([sys.executable, '-m', 'dr_detection.train', '--config', str(cfg), '--run_dir', str(dst),
                        '--processes', str(processes)], capture_output=True, text=True, timeout=600)
    if r.returncode: pytest.fail(f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}", pytrace=False)
    return {p.name for p in dst.iterdir()} - before, r.stdout


def _valid_auc(run):
    "Validation AUC of the model folder of `run`, from its ONNX graph; and the ONNX/PyTorch parity."
    import onnxruntime as ort
    net, meta = load_torch_model(run/'model')
    df = training_rows(read_table(run, 'preprocessed.csv')); df = df[df.is_valid]
    x = torch.stack([torch.tensor(np.asarray(Image.open(p).convert('RGB')) / 255., dtype=torch.float32).permute(2, 0, 1)
                     for p in df.prep_path])
    x = (x - torch.tensor(meta.normalize.mean)[:, None, None]) / torch.tensor(meta.normalize.std)[:, None, None]
    prob = ort.InferenceSession(str(run/'model/model.onnx')).run(['prob'], {'image': x.numpy()})[0]
    return roc_auc_score(df.label, prob), onnx_parity(net, run/'model/model.onnx', x[:8])


def test_two_processes(prepared, tmp_path):
    src, cfg = prepared
    new1, _ = _train(src, tmp_path/'one', cfg, 1)
    new2, out = _train(src, tmp_path/'two', cfg, 2)
    # only process 0 wrote: the same outputs as one process, and no checkpoint, config or rank files left over
    assert new2 == new1 == {'model', 'train_log.csv', 'training_curve.png'}
    assert sorted(p.name for p in (tmp_path/'two/model').iterdir()) == ['model.json', 'model.onnx', 'model.safetensors']
    tr = json.loads((tmp_path/'two/model/model.json').read_text())['training']
    assert tr['processes'] == 2 and [r['rank'] for r in tr['ranks']] == [0, 1]  # two ranks ran
    # each saw its share: half the batches (and images) of one process in every epoch
    n = tr['data']['train']['images']; bs1 = min(8, n); bs2 = min(8, n // 2)
    for r in tr['ranks']:
        assert len(r['train_batches']) == tr['epochs_run'] == 2
        for b, i in zip(r['train_batches'], r['train_images']): assert b == math.ceil((n // bs2) / 2) and i == b * bs2
    assert sum(r['train_images'][0] for r in tr['ranks']) <= n + 1
    import pandas as pd
    assert pd.read_csv(tmp_path/'two/train_log.csv').epoch.tolist() == [0, 1]  # logged once, by process 0
    # the model loads, its ONNX graph matches PyTorch, and its validation AUC is in line with one process
    auc1, _ = _valid_auc(tmp_path/'one')
    auc2, par = _valid_auc(tmp_path/'two')
    print(f"validation AUC: 1 process {auc1:.3f}, 2 processes {auc2:.3f}; one-process batches/epoch {n // bs1}")
    assert par['prob'] <= 1e-4
    assert abs(auc1 - auc2) <= 0.15 and auc2 >= 0.7
