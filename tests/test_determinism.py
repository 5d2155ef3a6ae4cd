"Same config, same seed, same machine: stage 03 writes a byte-identical model.safetensors (issue 13 item 5)."
import hashlib, json, shutil, subprocess, sys
from pathlib import Path
import pytest
from dr_detection.config import load_config
from dr_detection.data import build_upstream

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT/'configs'/'smoke.yaml'


@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> Path:
    "Stages 00-02 of the smoke config."
    d = tmp_path_factory.mktemp('smoke')
    build_upstream(d, '03', load_config(SMOKE))
    return d


def _train(src:Path, dst:Path) -> Path:
    "Stage 03 of the smoke config in a fresh process, on a copy of the prepared run folder."
    shutil.copytree(src, dst)
    r = subprocess.run([sys.executable, '-m', 'dr_detection.train', '--config', str(SMOKE), '--run_dir', str(dst)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dst/'model'


def test_smoke_training_is_byte_identical(prepared, tmp_path):
    a, b = _train(prepared, tmp_path/'a'), _train(prepared, tmp_path/'b')
    sha = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()
    assert sha(a/'model.safetensors') == sha(b/'model.safetensors')
    ja, jb = (json.loads((m/'model.json').read_text())['training'] for m in (a, b))
    det = ja['determinism']
    assert det['deterministic_algorithms'] and det['cudnn_deterministic'] and not det['cudnn_benchmark']
    assert det['seed'] == 42 and det['threads'] >= 1 and det == jb['determinism']
