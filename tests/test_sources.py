"""Served = evaluated on raw photos (issue 15 item 0): `dr-evaluate` on a manifest of raw photos (no `prep_path`) gives
every photo the probability the service answers for the same file (max |diff| <= 1e-6), for synthetic demo photos,
the demo run's photos and the natural-colour photos of ../shared/data."""
import shutil
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from conftest import make_standin_model
from dr_detection.evaluate import evaluate_manifest
from dr_detection.serve import ServedModel

LEVEL_TO_LABEL = {0: 0, 3: 1, 4: 1}                            # the default label_map; grades 1-2 left out

def raw_manifest(photos, levels:dict, path) -> Path:
    "A manifest CSV of raw photos (`id, patient, eye, label, path`, no `prep_path`) at `path`."
    eye = lambda s: s.rsplit('_', 1)[-1] if s.endswith(('_left', '_right')) else 'unknown'
    rows = [dict(id=p.stem, patient=p.stem.removesuffix('_' + eye(p.stem)), eye=eye(p.stem), label=levels.get(p.stem),
                 path=str(Path(p).resolve())) for p in photos]
    pd.DataFrame(rows).to_csv(path, index=False)
    return Path(path)

def served_vs_evaluated(model_dir, manifest, out) -> np.ndarray:
    "|evaluated - served| per photo: `evaluate_manifest`'s predictions.csv vs `ServedModel.predict` on the file bytes."
    evaluate_manifest(model_dir, manifest, out, split='all', n_boot=0, n_cam=0)
    pred = pd.read_csv(Path(out)/'predictions.csv', dtype={'id': str}).set_index('id').prob
    paths = pd.read_csv(manifest, dtype={'id': str}).set_index('id').path
    m = ServedModel(model_dir, threads=1)
    try: served = {i: m.predict(Path(paths[i]).read_bytes())['probability'] for i in pred.index}
    finally: m.close()
    return np.array([abs(served[i] - p) for i, p in pred.items()])

@pytest.fixture(scope='module')
def synthetic_photos(tmp_path_factory):
    "Seeded synthetic camera photos (00b_synthetic), 600-1400 px wide, and their labels."
    from dr_detection.synthetic import make_sample_dataset
    d = make_sample_dataset(tmp_path_factory.mktemp('synth'), n_patients=6, seed=3, width_range=(600, 1400), n_bad=0)
    lv = pd.read_csv(d/'trainLabels.csv')
    return sorted((d/'train').glob('*.jpeg')), {r.image: LEVEL_TO_LABEL.get(r.level) for r in lv.itertuples()}

def test_standin_model_served_as_evaluated(synthetic_photos, tmp_path):
    "A stand-in model at 96 px: every raw synthetic photo that passes the quality check gets the served probability."
    model = make_standin_model(tmp_path/'model', 96, scale=40.)
    diff = served_vs_evaluated(model, raw_manifest(*synthetic_photos, tmp_path/'m.csv'), tmp_path/'ev')
    assert len(diff) >= 6 and diff.max() <= 1e-6, diff.max()

def test_demo_model_served_as_evaluated_on_raw_demo_photos(demo_run, tmp_path):
    "The trained demo model on the raw demo photos (a copy of the run): evaluated = served, and the photos differ."
    DEMO = demo_run
    shutil.copytree(DEMO/'model', tmp_path/'model')
    photos = sorted((DEMO/'demo_data'/'train').glob('*.jpeg'))[:24]
    lv = pd.read_csv(DEMO/'demo_data'/'trainLabels.csv')
    man = raw_manifest(photos, {r.image: LEVEL_TO_LABEL.get(r.level) for r in lv.itertuples()}, tmp_path/'m.csv')
    diff = served_vs_evaluated(tmp_path/'model', man, tmp_path/'ev')
    prob = pd.read_csv(tmp_path/'ev'/'predictions.csv').prob
    assert len(diff) >= 15 and prob.std() > 0.05 and diff.max() <= 1e-6, diff.max()

def natural_manifest(shared, path, n:int=30) -> Path:
    "`n` natural-colour eyepacs-1024 photos and 3 full-resolution IDRiD photos (4288x2848), as a raw manifest."
    photos = sorted((shared/'eyepacs-1024'/'train').glob('*.jpeg'))[::16][:n]
    photos += sorted((shared/'fullres'/'idrid').glob('*.jpg'))[:3]
    lv = pd.read_csv(shared/'labels'/'trainLabels.csv')
    levels = {r.image: LEVEL_TO_LABEL.get(r.level) for r in lv.itertuples()}
    levels |= {p.stem: 1 for p in photos if 'IDRiD' in p.stem}   # every IDRiD photo shows DR
    return raw_manifest(photos, levels, path)

def test_natural_photos_served_as_evaluated(shared, demo_run, tmp_path):
    "The demo model on 30 natural-colour photos and 3 full-resolution IDRiD photos: evaluated = served."
    diff = served_vs_evaluated(shutil.copytree(demo_run/'model', tmp_path/'model'), natural_manifest(shared, tmp_path/'m.csv'),
                               tmp_path/'ev')
    assert len(diff) >= 20 and diff.max() <= 1e-6, diff.max()

def test_equalised_oversampled_served_as_evaluated(shared, tmp_path):
    "The real-data configs' preparation (equalised at twice the input size, then averaged down): evaluated = served."
    model = make_standin_model(tmp_path/'model', 128, scale=40., prep=dict(equalize=True, equalize_oversample=2))
    diff = served_vs_evaluated(model, natural_manifest(shared, tmp_path/'m.csv', n=12), tmp_path/'ev')
    assert len(diff) >= 10 and diff.max() <= 1e-6, diff.max()
