"An interrupted training run resumes from its last checkpoint: every epoch logged once, the same model (issue 13 item 3)."
import hashlib, json, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest
import yaml
from dr_detection.config import load_config
from dr_detection.data import build_upstream

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    "Stages 00-02 of the smoke config, and the smoke config with 3 epochs."
    d = tmp_path_factory.mktemp('resume')
    raw = yaml.safe_load((ROOT/'configs/smoke.yaml').read_text()); raw['train']['epochs'] = 3
    cfg = d/'smoke3.yaml'; cfg.write_text(yaml.safe_dump(raw))
    build_upstream(d/'run', '03', load_config(cfg))
    return d/'run', cfg


def _cmd(cfg, run, *extra):
    return [sys.executable, '-m', 'dr_detection.train', '--config', str(cfg), '--run_dir', str(run), *extra]
def _sha(f): return hashlib.sha256(Path(f).read_bytes()).hexdigest()


def test_killed_run_resumes(prepared, tmp_path):
    src, cfg = prepared
    full, cut = tmp_path/'full', tmp_path/'cut'
    shutil.copytree(src, full); shutil.copytree(src, cut)
    r = subprocess.run(_cmd(cfg, full), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (full/'checkpoint').exists()  # removed once the model is saved
    # the same run, killed (SIGKILL: no chance to clean up) as soon as epoch 0's checkpoint is complete
    p = subprocess.Popen(_cmd(cfg, cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = cut/'checkpoint'/'checkpoint.json'
    while not ck.exists() and p.poll() is None: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    done = json.loads(ck.read_text())['epochs_done']
    assert 1 <= done < 3 and not (cut/'model').exists()
    assert len(pd.read_csv(cut/'train_log.csv')) == done
    r = subprocess.run(_cmd(cfg, cut, '--resume'), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'resuming after epoch {done - 1}' in r.stdout
    log = pd.read_csv(cut/'train_log.csv')
    assert log.epoch.tolist() == [0, 1, 2]  # every epoch logged once
    assert log.drop(columns='seconds').equals(pd.read_csv(full/'train_log.csv').drop(columns='seconds'))
    assert _sha(cut/'model/model.safetensors') == _sha(full/'model/model.safetensors')  # the same model, to the byte
    assert not (cut/'checkpoint').exists()


def test_checkpoint_of_another_config_is_not_resumed(prepared, tmp_path):
    "A checkpoint made with other settings is ignored: training starts from scratch."
    src, cfg = prepared
    run = tmp_path/'run'; shutil.copytree(src, run)
    (run/'checkpoint').mkdir()
    (run/'checkpoint/checkpoint.json').write_text(json.dumps(dict(fingerprint='another', epochs_done=2)))
    r = subprocess.run(_cmd(cfg, run, '--resume'), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'training starts from scratch' in r.stdout and len(pd.read_csv(run/'train_log.csv')) == 3


def test_no_half_written_model(tmp_path):
    "save_model writes into a temporary folder and renames it: a model/ folder is always complete."
    from dr_detection.train import build_model, save_model
    cfg = load_config(None, overrides={'train.arch': 'resnet18', 'preprocess.size': 64})
    (tmp_path/'model').mkdir(); (tmp_path/'model/model.json').write_text('{"stale": true}')
    save_model(build_model('resnet18'), cfg, tmp_path/'model')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model']
    assert 'stale' not in (tmp_path/'model/model.json').read_text()
