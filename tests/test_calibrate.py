"""`dr-calibrate` (04b): refuses without enough positives, writes a served copy with its provenance, and calibrating on
half of a shifted site's patients restores the target sensitivity on the other half (demo model; real data when a
real-data model is given in $DR_REAL_MODEL)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from conftest import make_standin_model
from test_sources import LEVEL_TO_LABEL, raw_manifest
from dr_detection.calibrate import calibrate, min_positives
from dr_detection.evaluate import evaluate_manifest, operating_metrics
from dr_detection.infer import load_meta
from dr_detection.serve import create_app

TOL = 0.1  # sensitivity on the held-out half may fall this far below the target (about 2 of 20 DR photos)

def cli(*args) -> subprocess.CompletedProcess:
    "`dr-calibrate` (as `python -m dr_detection.calibrate`) with `args`."
    return subprocess.run([sys.executable, '-m', 'dr_detection.calibrate', *map(str, args)], capture_output=True,
                          text=True, timeout=600)

def halves(man:pd.DataFrame, seed:int=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    "Two halves of a manifest by patient, stratified by whether the patient has a DR eye."
    pt = man.groupby('patient').label.max().fillna(0).sort_values(kind='stable')
    order = pt.groupby(pt).sample(frac=1, random_state=seed).index   # shuffled within each class
    a = set(order[0::2])
    return man[man.patient.isin(a)], man[~man.patient.isin(a)]

@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    "14 synthetic patients (28 photos), the first 7 patients' eyes labelled DR (labels arbitrary: mechanics only)."
    from dr_detection.synthetic import make_sample_dataset
    d = make_sample_dataset(tmp_path_factory.mktemp('cal_synth'), n_patients=14, seed=5, width_range=(600, 900),
                            n_bad=0)
    photos = sorted((d/'train').glob('*.jpeg'))
    pts = sorted({p.stem.rsplit('_', 1)[0] for p in photos})
    return photos, {p.stem: int(p.stem.rsplit('_', 1)[0] in pts[:7]) for p in photos}

def test_refuses_with_too_few_positives(synthetic, tmp_path):
    "Too few DR photos: exit 1, a message with the counts and the minimum, and no model folder written."
    model = make_standin_model(tmp_path/'model', 96, scale=40.)
    photos, labels = synthetic
    few = {k: int(v and k.endswith('_left')) for k, v in labels.items()}   # 7 DR photos
    man = raw_manifest(photos, few, tmp_path/'site.csv')
    r = cli('--model', model, '--manifest', man, '--out', tmp_path/'site_model', '--bootstrap', 50)
    assert r.returncode == 1 and not (tmp_path/'site_model').exists()
    assert 'too few referable (DR) photos' in r.stderr and f'at least {min_positives(0.9)} needed' in r.stderr, r.stderr

def test_cli_writes_a_served_copy_with_provenance(synthetic, tmp_path):
    "The copy's model.json has the new threshold and its source; the service answers with it and shows the source."
    model = make_standin_model(tmp_path/'model', 96, scale=40.)
    before = (model/'model.json').read_text()
    man = raw_manifest(*synthetic, tmp_path/'site.csv')
    r = cli('--model', model, '--manifest', man, '--out', tmp_path/'site_model', '--bootstrap', 100)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('dr-calibrate: threshold 0.5 ->') and 'sensitivity' in r.stdout
    meta, rec = load_meta(tmp_path/'site_model'), json.loads((tmp_path/'site_model'/'calibration.json').read_text())
    assert (model/'model.json').read_text() == before                        # the original is never changed
    assert meta.threshold == rec['threshold'] != 0.5 and rec['previous_threshold'] == 0.5
    assert meta.threshold_source.startswith('dr-calibrate on site.csv') and rec['counts']['n_pos'] >= 10
    assert meta.evaluation['calibration']['sensitivity'] >= 0.9 and rec['sensitivity_ci'][0] <= rec['sensitivity']
    with TestClient(create_app(tmp_path/'site_model')) as c:
        info = c.get('/model').json()
        p = c.post('/predict', files={'file': ('x.jpeg', synthetic[0][0].read_bytes(), 'image/jpeg')}).json()
    assert info['threshold'] == meta.threshold and info['threshold_source'] == meta.threshold_source
    assert p['threshold'] == meta.threshold
    r2 = cli('--model', model, '--manifest', man, '--out', tmp_path/'site_model')
    assert r2.returncode == 1 and 'not empty' in r2.stderr                   # never overwrites a folder

def score_shifted(model_dir:Path, k:float=8.) -> Path:
    "`model_dir` with its ONNX `prob` output raised to the power `k`: a site whose photos all score lower (monotone)."
    import onnx
    from onnx import helper, TensorProto
    f = model_dir/'model.onnx'; g = onnx.load(str(f))
    for n in g.graph.node: n.output[:] = ['prob_raw' if o == 'prob' else o for o in n.output]
    g.graph.initializer.append(helper.make_tensor('shift_k', TensorProto.FLOAT, [], [k]))
    g.graph.node.append(helper.make_node('Pow', ['prob_raw', 'shift_k'], ['prob']))
    onnx.save(g, str(f))
    return model_dir

def sens(model_dir, man, out) -> float:
    "Sensitivity at `model_dir`'s threshold on the gradable photos of manifest `man` (dr-evaluate's scoring)."
    return evaluate_manifest(model_dir, man, out, split='all', n_boot=0, n_cam=0)['test']['sensitivity']

def split_and_calibrate(model, man:pd.DataFrame, tmp:Path) -> dict:
    "Calibrate `model` on one half of `man`'s patients; sensitivities on the other half at the old and new threshold."
    a, b = halves(man)
    a.to_csv(tmp/'a.csv', index=False); b.to_csv(tmp/'b.csv', index=False)
    res = calibrate(model, tmp/'a.csv', tmp/'site_model', n_boot=200)
    return dict(res=res, old=sens(model, tmp/'b.csv', tmp/'ev_old'),
                new=sens(tmp/'site_model', tmp/'b.csv', tmp/'ev_new'))

def test_calibrating_half_restores_sensitivity_on_the_other_half(demo_run, tmp_path):
    "A site whose photos score lower: sensitivity falls at the old threshold; calibrated on half, the other half regains it."
    DEMO = demo_run
    model = score_shifted(Path(shutil.copytree(DEMO/'model', tmp_path/'model')))
    lv = pd.read_csv(DEMO/'demo_data'/'trainLabels.csv')
    labels = {r.image: LEVEL_TO_LABEL.get(r.level) for r in lv.itertuples()}
    photos = [p for p in sorted((DEMO/'demo_data'/'train').glob('*.jpeg')) if labels.get(p.stem) is not None]
    man = pd.read_csv(raw_manifest(photos, labels, tmp_path/'site.csv'), dtype={'id': str, 'patient': str})
    r = split_and_calibrate(model, man, tmp_path)
    target = r['res']['target_sensitivity']
    assert r['res']['counts']['n_pos'] >= min_positives(target)
    assert r['old'] < target - TOL, r                        # the shift costs sensitivity at the original threshold
    assert r['new'] >= target - TOL and r['new'] > r['old'], r  # the site threshold restores it on unseen patients
    assert r['res']['threshold'] < r['res']['previous_threshold']

REAL_MODEL = os.environ.get('DR_REAL_MODEL')  # real-data model trained WITHOUT eyepacs-1024 (configs/loso*.yaml)

@pytest.mark.skipif(not REAL_MODEL, reason='no real-data model: set DR_REAL_MODEL to a model folder trained without '
                    'eyepacs-1024 (dr-reproduce --config configs/loso-quick.yaml; ~15 min of CPU)')
def test_realdata_half_calibration(shared, tmp_path):
    """Natural-colour eyepacs-1024 photos, split by patient: half of them hold too few gradable DR eyes for
    `dr-calibrate`, which refuses; the same rule forced on that half still brings the other half's sensitivity to the
    target within 2 TOL (7 DR eyes a half: one eye is 0.14). Specificity is printed, not asserted: with so few DR eyes
    it depends on the model (0.32 -> 0.71 for one LOSO model, 0.87 -> 0.03 for another), which is why it refuses."""
    from dr_detection.calibrate import CalibrationError, score_site, site_threshold
    lv = pd.read_csv(shared/'labels'/'trainLabels.csv')
    labels = {r.image: LEVEL_TO_LABEL.get(r.level) for r in lv.itertuples()}
    photos = [p for p in sorted((shared/'eyepacs-1024'/'train').glob('*.jpeg')) if labels.get(p.stem) is not None]
    a, b = halves(pd.read_csv(raw_manifest(photos, labels, tmp_path/'site.csv'), dtype={'id': str, 'patient': str}))
    a.to_csv(tmp_path/'a.csv', index=False); b.to_csv(tmp_path/'b.csv', index=False)
    scored, counts = score_site(REAL_MODEL, tmp_path/'a.csv')
    if counts['n_pos'] < min_positives():
        with pytest.raises(CalibrationError, match='too few referable'):
            calibrate(REAL_MODEL, tmp_path/'a.csv', tmp_path/'x')
    t_old, t_new = load_meta(REAL_MODEL).threshold, site_threshold(scored, n_boot=0)['threshold']
    sb, _ = score_site(REAL_MODEL, tmp_path/'b.csv')
    om = lambda t: {k: operating_metrics(sb.label, sb.prob, t)[k] for k in ('sensitivity', 'specificity')}
    old, new = om(t_old), om(t_new)
    print(json.dumps(dict(calibration_half=counts, threshold_old=t_old, threshold_new=t_new, other_half_old=old,
                          other_half_new=new, other_half_n_pos=int(sb.label.sum()), other_half_n=len(sb))))
    assert new['sensitivity'] >= 0.9 - 2*TOL, (old, new)
