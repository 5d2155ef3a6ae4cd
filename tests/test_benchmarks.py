"""The JPEG-robustness benchmark's bookkeeping (benchmarks/jpeg_robustness.py, issue 15): what it counts as a move over
the target, an answer change and a photo graded both times, on a hand-made table and through a stand-in model."""
import sys
from pathlib import Path
import pandas as pd
from conftest import make_standin_model
from dr_detection.serve import ServedModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent/'benchmarks'))
from jpeg_robustness import TARGET, measure, summary

def test_summary_counts():
    t = pd.DataFrame(dict(p=[.10, .50, .50, .90], p_q95=[.10, .56, .44, .90],
                          outcome=['no_referral', 'refer', 'ungradable', 'refer'], gradable=[True, True, False, True],
                          outcome_q95=['no_referral', 'refer', 'no_referral', 'ungradable'],
                          gradable_q95=[True, True, True, False]))
    s = summary(t, 95)
    assert TARGET == 0.05
    assert (s['n'], s['over_target'], s['outcome_changes']) == (4, 2, 2)
    assert (s['gradable_n'], s['gradable_over']) == (2, 1)       # rows 0 and 1 are graded both times
    assert abs(s['gradable_max'] - 0.06) < 1e-9 and abs(s['max'] - 0.06) < 1e-9

def test_measure_through_the_service(tmp_path, photos):
    files = []
    for name in ['small.jpeg', 'dark.jpeg']:
        f = tmp_path/name; f.write_bytes(photos[name]); files.append(f)
    m = ServedModel(make_standin_model(tmp_path/'model'), threads=1)
    try: res, t = measure(m, files, [95, 50])
    finally: m.close()
    assert set(res) == {'q95 eyepacs-1024', 'q50 eyepacs-1024'} and len(t) == 2
    assert {'p', 'p_q95', 'outcome_q50', 'gradable_q95'} <= set(t.columns)
    assert res['q95 eyepacs-1024']['max'] == (t.p_q95 - t.p).abs().max()
