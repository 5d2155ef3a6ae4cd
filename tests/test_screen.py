"Screening rules (03b) over every combination of eyes, and the module stays light enough for the service."
import itertools, subprocess, sys
import pytest
from dr_detection.screen import OUTCOMES, ScreeningPolicy, eye_outcome, patient_decision

T = 0.5
EYES = {'dr': dict(probability=0.9, gradable=True), 'ok': dict(probability=0.1, gradable=True),
        'bad': dict(probability=0.01, gradable=False)}
POLICIES = [ScreeningPolicy(ungradable=u, eye_rule=r) for u in ('refer', 'exclude') for r in ('max', 'mean')]
CASES = [dict(zip(sides, states)) for n in (1, 2) for sides in itertools.combinations(('left', 'right'), n)
         for states in itertools.product(EYES, repeat=n)]

@pytest.mark.parametrize('policy', POLICIES, ids=lambda p: f'{p.ungradable}-{p.eye_rule}')
@pytest.mark.parametrize('case', CASES, ids=lambda c: '+'.join(f'{k}:{v}' for k, v in c.items()))
def test_patient_decision(case, policy):
    "Never `no_referral` with an ungradable eye under 'refer'; an ungradable-only patient is never `no_referral`."
    d = patient_decision({s: EYES[v] for s, v in case.items()}, policy, T)
    assert d['outcome'] in OUTCOMES and d['reason']
    states = set(case.values())
    if 'bad' in states and policy.ungradable == 'refer': assert d['outcome'] == 'refer'
    if states == {'bad'}: assert d['outcome'] == ('refer' if policy.ungradable == 'refer' else 'ungradable')
    if states == {'ok'}: assert d['outcome'] == 'no_referral' and 'no referable DR' in d['reason']
    if policy.eye_rule == 'max' and 'dr' in states: assert d['outcome'] == 'refer' and d['reason'].startswith('DR in')
    assert (d['probability'] is None) == (states == {'bad'})

def test_reasons_name_the_eye():
    "The reason names the eye with DR and the ungradable eye."
    d = patient_decision({'left': EYES['bad'], 'right': EYES['dr']}, ScreeningPolicy(), T)
    assert d['reason'] == 'DR in the right eye; left eye ungradable: retake the photo (refer if it cannot be retaken)'

def test_eye_outcome_threshold_inclusive():
    "At the threshold is a referral; an ungradable photo is ungradable whatever its probability."
    assert [eye_outcome(p, T, True) for p in (0.4999, 0.5, 1.0)] == ['no_referral', 'refer', 'refer']
    assert {eye_outcome(p, T, False) for p in (0.0, 0.5, 1.0)} == {'ungradable'}

def test_screen_is_light():
    "screen.py imports neither numpy/pandas/torch nor any other dr_detection module (the service uses it as is)."
    code = "import sys, dr_detection.screen; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('numpy', 'pandas', 'torch', 'sklearn') or (m.startswith('dr_detection.') and m != 'dr_detection.screen')))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'
