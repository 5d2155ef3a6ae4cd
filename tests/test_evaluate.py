"Sweeps of 04_evaluate's own rules (threshold, bootstrap, temperature), the threshold's independence from test data, and dr-evaluate."
import json, math, shutil
from types import SimpleNamespace
import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from fastcore.script import anno_parser
from conftest import make_standin_model
from dr_detection.config import load_config, EvaluateConfig
from dr_detection.data import read_table, usable_rows
from dr_detection.evaluate import (operating_metrics, fit_temperature, apply_temperature, choose_threshold, cluster_bootstrap,
                                   average_precision, roc_auc, bootstrap_ci, split_metrics, evaluate_predictions, run_evaluate,
                                   evaluate_main, open_model, predict_images, sigmoid, logit, _boot_stats, choose_screening,
                                   patient_labels, photo_source, source_warnings, subgroup_metrics)
from dr_detection.infer import load_meta
from dr_detection.infer import cam_heat, cam_overlay, cam_scale, model_cam_scale
from dr_detection.preprocess import IMAGENET_STATS

def _cases():
    "Fixed (seeded) label/score pairs: continuous scores, heavy ties, imbalance, tiny samples."
    rng = np.random.default_rng(123)
    out = []
    for n, prev, tie in [(12, .5, None), (200, .3, None), (200, .3, 10), (500, .05, 20), (7, .4, 3), (1000, .5, None)]:
        y = (rng.random(n) < prev).astype(int); y[0], y[1] = 0, 1
        p = np.clip(rng.normal(0.35 + 0.3*y, 0.2), 0.001, 0.999)
        if tie: p = np.round(p*tie)/tie
        p = np.clip(p, 0.001, 0.999)
        out.append((y, p))
    return out

CASES = _cases()

def test_degenerate_inputs_give_nan_not_errors():
    assert math.isnan(roc_auc([1, 1, 1], [.1, .2, .3])) and math.isnan(average_precision([0, 0], [.1, .2]))
    om = operating_metrics([0, 0, 1], [.1, .2, .3], 0.9)
    assert math.isnan(om['ppv']) and om['npv'] == pytest.approx(2/3)
    sm = split_metrics([0, 0, 0, 0], [.1, .2, .3, .4], ['a', 'a', 'b', 'b'], .5, n_boot=30)
    assert math.isnan(sm['auc']) and math.isnan(sm['ci']['auc']['lo']) and sm['notes']
    th = choose_threshold([1, 1], [.2, .3])
    assert th['method'] == 'default' and th['threshold'] == 0.5 and th['note']

def test_temperature_fit_matches_grid_and_improves():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, 3000); y = (rng.random(3000) < 1/(1+np.exp(-z))).astype(int)
    for k in (0.5, 1.0, 2.5):
        p = 1/(1+np.exp(-k*z))
        T = fit_temperature(y, p)
        grid = np.exp(np.linspace(-2, 2, 4001))
        zz = np.log(p/(1-p))[None, :]/grid[:, None]                  # logits at each temperature
        best = grid[np.argmin(np.mean(np.logaddexp(0, zz) - y*zz, axis=1))]   # NLL, written independently
        assert T == pytest.approx(best, rel=2e-3)
        assert skm.log_loss(y, apply_temperature(p, T)) <= skm.log_loss(y, p) + 1e-12

@pytest.mark.parametrize('y,p', CASES)
@pytest.mark.parametrize('target', [0.8, 0.9, 0.95, 1.0])
def test_threshold_matches_bruteforce(y, p, target):
    "The rule's score is the highest reaching the target; the threshold sits in the gap below it, same validation numbers."
    ct = choose_threshold(y, p, 'sensitivity', target)
    cands = [t for t in np.unique(p) if np.mean(p[y == 1] >= t) >= target - 1e-9]   # every distinct score, by the p >= t rule
    best = max(cands); below = p[p < best]
    assert ct['score'] == best
    assert (below.max() if len(below) else -1) < ct['threshold'] <= best
    assert operating_metrics(y, p, ct['threshold'])['confusion'] == operating_metrics(y, p, best)['confusion']
    if len(below) and ct['threshold'] < best:   # the midpoint on the log-odds scale
        assert logit(ct['threshold']) == pytest.approx((logit(best) + logit(below.max()))/2, abs=1e-9)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    assert choose_threshold(y, p, 'youden')['score'] == thr[np.argmax(tpr - fpr)]

@pytest.mark.parametrize('y,p', CASES)
def test_fast_bootstrap_stats_equal_sklearn(y, p):
    "Rank AUC, numpy AP and rates on bootstrap resamples equal scikit-learn's values to 1e-12."
    rng = np.random.default_rng(7)
    for _ in range(30):
        i = rng.integers(0, len(y), len(y)); yi, pi = y[i].astype(float), p[i]
        b = _boot_stats(yi, pi, 0.5); om = operating_metrics(yi, pi, 0.5)
        if 0 < yi.sum() < len(yi):
            assert abs(b['auc'] - skm.roc_auc_score(yi, pi)) <= 1e-12
            assert abs(b['ap'] - skm.average_precision_score(yi, pi)) <= 1e-12
        for k in ('sensitivity', 'specificity', 'ppv', 'npv', 'accuracy'):
            assert b[k] == pytest.approx(om[k], abs=1e-12, nan_ok=True)

def test_cluster_bootstrap_keeps_patients_whole_and_is_seeded():
    g = np.array(['a', 'a', 'b', 'c', 'c', 'c', 'd'])
    size = pd.Series(g).value_counts()
    for idx in cluster_bootstrap(g, 200, seed=3):
        counts = pd.Series(g[idx]).value_counts()
        assert all(counts[k] % size[k] == 0 for k in counts.index)
    a = [i.tolist() for i in cluster_bootstrap(g, 5, seed=9)]; b = [i.tolist() for i in cluster_bootstrap(g, 5, seed=9)]
    assert a == b
    ci = bootstrap_ci(lambda i: dict(m=float(np.mean(i))), g, 100, seed=1)
    assert ci['m']['n_valid'] == 100 and ci['m']['lo'] <= ci['m']['hi']

def _pred_tables(seed=0, n_pat=40):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pat):
        dr = rng.random() < .4
        for eye in ('left', 'right'):
            lab = int(dr and rng.random() < .8)
            rows.append(dict(id=f'{i}_{eye}', patient=str(i), eye=eye, split='valid' if i < n_pat//2 else 'test', label=lab,
                             prob=float(np.clip(rng.normal(.35+.3*lab, .15), .01, .99)),
                             quality_group=rng.choice(['EyeQ Good', 'EyeQ Usable', 'automatic only'])))
    d = pd.DataFrame(rows); d['prob_tta'] = np.clip(d.prob + rng.normal(0, .02, len(d)), .01, .99)
    return d[d.split == 'valid'], d[d.split == 'test']

@pytest.mark.parametrize('method', ['sensitivity', 'youden'])
def test_threshold_independent_of_test_data(method):
    valid, test = _pred_tables()
    ecfg = EvaluateConfig(threshold_method=method, bootstrap=50)
    ref = evaluate_predictions(valid, test, ecfg)
    rng = np.random.default_rng(2)
    altered = [test.assign(label=rng.permutation(test.label.values)), test.assign(label=1-test.label), test.assign(label=0),
               test.assign(prob=rng.random(len(test))), test.assign(prob=1-test.prob), test.iloc[::-1], test.iloc[:4],
               pd.concat([test, test.assign(patient=test.patient+'x')])]
    for t in altered:
        r = evaluate_predictions(valid, t, ecfg)
        assert r['threshold'] == ref['threshold']
        assert r['calibration']['temperature'] == ref['calibration']['temperature']
    # while the validation split does move it
    v2 = valid.assign(prob=np.where(valid.label == 1, valid.prob*.5, valid.prob))
    assert evaluate_predictions(v2, test, ecfg)['threshold']['threshold'] != ref['threshold']['threshold']

def test_prediction_is_the_onnx_graph_on_model_json_normalisation(standin_run, tmp_path):
    "The stand-in's probability recomputed by hand from its known scale and bias and IMAGENET_STATS."
    from PIL import Image
    sess, meta = open_model(make_standin_model(tmp_path/'model', 64, scale=2.0, bias=0.1))
    f = sorted((standin_run/'preprocessed').glob('*.png'))[0]
    x = (np.asarray(Image.open(f).convert('RGB'), np.float32)/255 - IMAGENET_STATS['mean'])/IMAGENET_STATS['std']
    r = predict_images(sess, meta, [f], tta=True)
    assert r['prob'][0] == pytest.approx(sigmoid(2.0*(x[..., 0]-x[..., 1]).mean() + 0.1), abs=1e-5)
    assert r['cam'].shape == (1, 8, 8) and r['prob_tta'][0] == pytest.approx(r['prob'][0], abs=0.05)

def test_run_evaluate_threshold_ignores_test_split(standin_run, tmp_path):
    cfg = load_config(overrides={'evaluate.bootstrap': 50})
    a, b = tmp_path/'a', tmp_path/'b'
    shutil.copytree(standin_run, a); shutil.copytree(standin_run, b)
    ma = run_evaluate(cfg, a)
    # alter everything about the test split: flipped labels and the images swapped for others
    df = pd.read_csv(b/'preprocessed.csv', dtype=str, keep_default_na=False)
    te = (df.split == 'test') & (df.excluded == '') & (df.keep == 'True')
    df.loc[te, 'label'] = (1 - pd.to_numeric(df.loc[te, 'label'])).astype(str)
    df.loc[te, 'prep_path'] = df.loc[te, 'prep_path'].sample(frac=1, random_state=0).values[::-1]
    df.to_csv(b/'preprocessed.csv', index=False)
    mb = run_evaluate(cfg, b)
    ja, jb = [json.loads((d/'model/model.json').read_text()) for d in (a, b)]
    assert ja['threshold'] == jb['threshold'] == ma['threshold']['threshold'] == mb['threshold']['threshold']
    assert ja['evaluation']['temperature'] == jb['evaluation']['temperature']
    assert ja['cam_scale'] == jb['cam_scale'] == ma['cam_display']['scale'] > 0   # the CAM display scale: valid split only, too
    assert ma['test']['confusion'] != mb['test']['confusion']      # the test numbers did change
    for f in ('metrics.json', 'MODEL_CARD.md', 'roc.png', 'pr.png', 'confusion.png', 'reliability.png', 'cam.png', 'predictions.csv'):
        assert (a/f).exists(), f
    card = (a/'MODEL_CARD.md').read_text()
    assert 'SYNTHETIC DATA' in card and 'not a diagnosis' in card
    m = json.loads((a/'metrics.json').read_text())
    assert f"{m['test']['auc']:.3f}" in card and f"{m['threshold']['threshold']:.4g}" in card   # numbers come from metrics.json
    assert m['threshold']['chosen_on'] == 'valid' and m['dataset']['synthetic'] is True

def test_dr_evaluate_flags():
    "The command line keeps its flags (fastcore's parser built from evaluate_main's docments)."
    a = anno_parser(evaluate_main).parse_args(['--model', 'm', '--manifest', 'x.csv', '--out', 'o', '--split', 'all', '--tta',
                                               '--bootstrap', '20', '--seed', '3'])
    assert vars(a) == dict(model='m', manifest='x.csv', out='o', split='all', tta=True, bootstrap=20, seed=3, pdb=False, xtra=None)

def test_dr_evaluate_cli(standin_run, tmp_path, capsys):
    run = tmp_path/'run'; shutil.copytree(standin_run, run); df = read_table(run, 'preprocessed.csv')
    run_evaluate(load_config(overrides={'evaluate.bootstrap': 20}), run)
    before = (run/'model/model.json').read_text()
    assert evaluate_main(model=str(run/'model'), manifest=str(run/'preprocessed.csv'), out=str(tmp_path/'o1'), bootstrap=20) is None
    m = json.loads((tmp_path/'o1'/'metrics.json').read_text())
    assert (run/'model/model.json').read_text() == before            # scoring never moves the threshold
    assert m['dataset']['split'] == 'test' and m['threshold_from_model']
    assert 'AUC' in capsys.readouterr().out
    assert (tmp_path/'o1'/'MODEL_CARD.md').exists() and (tmp_path/'o1'/'metrics.json').exists()
    # a new dataset without splits or labels: every usable row predicted
    new = df.drop(columns=['split', 'label', 'grade']); new.to_csv(tmp_path/'new.csv', index=False)
    evaluate_main(model=str(run/'model'), manifest=str(tmp_path/'new.csv'), out=str(tmp_path/'o2'))
    pred = pd.read_csv(tmp_path/'o2'/'predictions.csv')
    assert len(pred) == len(usable_rows(df)) and not (tmp_path/'o2'/'metrics.json').exists() and pred.pred.isin([0, 1]).all()
    assert 'predictions only' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate_main(model=str(tmp_path), manifest=str(tmp_path/'new.csv'), out=str(tmp_path/'o3'))

def test_dr_evaluate_prepares_raw_photos(standin_run, tmp_path):
    run = tmp_path/'run'; shutil.copytree(standin_run, run); df = read_table(run, 'preprocessed.csv')
    raw = df.drop(columns=['prep_path', 'prep_error']); raw.to_csv(tmp_path/'raw.csv', index=False)
    evaluate_main(model=str(run/'model'), manifest=str(tmp_path/'raw.csv'), out=str(tmp_path/'o'), bootstrap=20, split='all')
    m = json.loads((tmp_path/'o'/'metrics.json').read_text())
    pred = pd.read_csv(tmp_path/'o'/'predictions.csv')
    assert len(pred) == len(usable_rows(df)) and m['test']['n'] == len(pred) and pred.prob.between(0, 1).all()

def test_cam_display_fixed_scale():
    "CAM heat is evidence for DR on the model's fixed scale: an all-negative (No-DR-like) map draws nothing, whatever its range."
    img = np.full((32, 32, 3), 100, np.uint8)
    for cam in (-np.ones((4, 4)), -np.arange(1., 17).reshape(4, 4), np.full((4, 4), -1e-3)):
        assert cam_heat(cam, 5.).max() == 0 and (cam_overlay(img, cam, 5.) == img).all()
    dr = np.zeros((4, 4)); dr[0, 0] = 5.
    heat = cam_heat(dr, 5.); assert heat[0, 0] == 1 and heat.sum() == 1
    assert np.array_equal(cam_overlay(img, dr, 5.), cam_overlay(img, dr * 10, 50.))   # only cam/scale matters
    assert (cam_overlay(img, dr, 5.)[:4, :4] != img[:4, :4]).any() and (cam_overlay(img, dr, 5.)[-8:, -8:] == img[-8:, -8:]).all()
    assert cam_scale(np.array([-5., 1, 2, 3]), 50) == 2 and cam_scale(-np.ones(3)) is None
    assert model_cam_scale(SimpleNamespace(cam_scale=3.)) == 3
    assert model_cam_scale(SimpleNamespace(cam_scale=None, onnx=SimpleNamespace(cam_bias=math.log(19) - 2))) == pytest.approx(8)

def test_run_evaluate_screening(standin_run, tmp_path):
    "Intention to screen counts the rejected DR photo as referred; the chosen policy lands in model.json and the card."
    run = tmp_path/'run'; shutil.copytree(standin_run, run)
    m = run_evaluate(load_config(overrides={'evaluate.bootstrap': 30}), run)
    s, df = m['screening'], read_table(run, 'preprocessed.csv')
    te = df[df.split == 'test']; lab = te[te.excluded == '']
    go, its = s['test']['image']['gradable_only'], s['test']['image']['intention_to_screen']
    assert its['n'] == len(lab) and go['n'] == int(lab.keep.sum()) == m['test']['n']
    assert its['confusion'][1][1] == go['confusion'][1][1] + 1          # the rejected DR photo: a true positive under ITS
    pt = pd.read_csv(run/'patients.csv', dtype={'patient': str}).set_index('patient')
    assert pt.loc['rtest', 'outcome'] == 'refer' and 'left eye ungradable' in pt.loc['rtest', 'reason']
    assert pt.loc['rtest', 'label'] == 1 and pt.loc['rtest', 'n_gradable'] == 1
    im = s['test']['imageability']
    assert {k: im['photos'][k] for k in ('n', 'gradable', 'share')} == dict(n=len(te), gradable=int(te.keep.sum()), share=te.keep.mean())
    lo, hi = im['photos']['ci']; assert lo <= im['photos']['share'] <= hi   # patient-bootstrap CI around it
    assert s['rejection']['class']['DR']['rejected'] == 2 and s['rejection']['class']['No DR']['rejected'] == 0
    meta = load_meta(run/'model')
    assert meta.screening.model_dump() == s['policy'] and meta.screening.eye_rule in ('max', 'mean')
    card = (run/'MODEL_CARD.md').read_text()
    for text in ('## Screening outcomes (test split)', 'intention to screen', 'IDx-DR', 'Imageability', 'source: demo',
                 '## What the quality check rejects'):
        assert text in card, text
    assert (run/'screening.png').exists() and 'source' in m['subgroups']

def test_eye_rule_chosen_on_validation():
    "mean wins when it ranks patients better; max on a tie; the patient threshold follows the image rule."
    rows = []
    for i in range(20):   # DR patients: both eyes moderately high; No DR: one eye noisy-high
        dr = i < 8
        for eye, p in zip(('left', 'right'), (.6, .62) if dr else (.1, .7)):
            rows.append(dict(patient=str(i), eye=eye, label=float(dr), prob=p + i*1e-3, gradable=True, excluded=''))
    v = pd.DataFrame(rows)
    ch = choose_screening(v)
    assert ch['policy']['eye_rule'] == 'mean' and ch['eye_rule_auc']['mean'] > ch['eye_rule_auc']['max']
    ps = v.groupby('patient').prob.mean(); y = v.groupby('patient').label.max()
    assert ch['policy']['patient_threshold'] == choose_threshold(y.values, ps.values)['threshold']
    tie = v.assign(prob=np.where(v.label == 1, .9, .1))
    assert choose_screening(tie)['policy']['eye_rule'] == 'max'

def test_patient_labels_rules():
    "DR if any eye is DR, No DR only if every eye is No DR, otherwise no class with the reason."
    d = pd.DataFrame(dict(patient=list('aabbccd'), label=[1, np.nan, 0, 0, 0, np.nan, np.nan],
                          excluded=['', 'grade 2 excluded by label_map', '', '', '', 'grade 1 excluded by label_map', '']))
    t = patient_labels(d)
    assert t.label['a'] == 1 and t.label['b'] == 0 and np.isnan(t.label['c']) and np.isnan(t.label['d'])
    assert 'grade 1' in t.excluded['c'] and 'no label' in t.excluded['d']

def test_per_source_subgroups_and_warning():
    "Folders become sources when the source column cannot tell them apart; a low-sensitivity source is flagged."
    paths = [f'/data/eyepacs-{r}/train/{i}_left.jpeg' for r in (1024, 256) for i in range(3)]
    assert photo_source(pd.DataFrame(dict(source='eyepacs', path=paths))).tolist() == ['eyepacs-1024']*3 + ['eyepacs-256']*3
    d = pd.DataFrame(dict(patient=[str(i) for i in range(8)], label=[1, 1, 0, 0]*2, prob=[.9, .8, .1, .2, .3, .9, .1, .2],
                          source=['A']*4 + ['B']*4))
    sg = subgroup_metrics(d, .5, 'source', n_boot=0)
    assert sg['A']['sensitivity'] == 1 and sg['B']['sensitivity'] == .5
    w = source_warnings(sg, 0.9)
    assert len(w) == 1 and w[0].startswith('source B: sensitivity 0.500')
