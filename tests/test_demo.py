"`make demo` end to end in a temporary folder: every stage runs, and what is served is what was evaluated."
import json
from pathlib import Path
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from dr_detection.data import read_table
from dr_detection.serve import create_app

@pytest.fixture
def demo(demo_run): return demo_run

def test_every_stage_wrote_its_outputs(demo):
    for f in ('manifest.csv', 'quality.csv', 'preprocessed.csv', 'model/model.json', 'model/model.onnx', 'metrics.json',
              'MODEL_CARD.md', 'predictions.csv', 'reproduce.json'):
        assert (demo/f).exists(), f
    assert len(list((demo/'notebooks').glob('[0-9][0-9]_*.ipynb'))) == 6

def test_served_is_evaluated_on_raw_photos(demo):
    "Every test photo 04 scored gets the same probability from /predict, sent as the raw file (max |diff| <= 1e-6)."
    pred = pd.read_csv(demo/'predictions.csv', dtype={'id': str})
    pred = pred[pred.split == 'test'].set_index('id').prob
    raw = read_table(demo, 'manifest.csv').set_index('id').path
    with TestClient(create_app(demo/'model')) as c:
        served = {i: c.post('/predict', files={'file': (Path(raw[i]).name, Path(raw[i]).read_bytes(), 'image/jpeg')}).json()
                  for i in pred.index}
    diff = max(abs(served[i]['probability'] - p) for i, p in pred.items())
    assert len(pred) >= 10 and diff <= 1e-6, diff

def test_relocatable_run(demo, tmp_path):
    "Run tables store paths relative to the run folder: a copied run reads back paths inside the copy."
    import shutil
    shutil.copytree(demo, tmp_path/'copy', ignore=shutil.ignore_patterns('notebooks'))
    t = read_table(tmp_path/'copy', 'preprocessed.csv')
    used = t.prep_path[t.prep_path != '']
    assert len(used) and all(p.startswith(str(tmp_path/'copy')) and Path(p).exists() for p in used)

def test_model_json_names_the_operating_point(demo):
    meta = json.loads((demo/'model/model.json').read_text())
    metrics = json.loads((demo/'metrics.json').read_text())
    assert meta['threshold'] == metrics['threshold']['threshold'] and 'valid split' in meta['threshold_source']
