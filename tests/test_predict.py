"dr-predict (04a): a file list with bad files never crashes, answers equal the service's, real photos in a folder."
import csv, subprocess, sys
from pathlib import Path
import pytest
from dr_detection.predict import COLUMNS, photo_files, predict_files

def _run(model_dir, args, out) -> list[dict]:
    "dr-predict in a fresh process (as `python -m`); its CSV rows."
    r = subprocess.run([sys.executable, '-m', 'dr_detection.predict', '--model', str(model_dir), *map(str, args),
                        '--out', str(out), '--quiet'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'dr-predict:' in r.stdout
    return list(csv.DictReader(open(out)))

@pytest.fixture(scope='module')
def day(tmp_path_factory, photos, bad_inputs) -> Path:
    "A folder of good photos named `<patient>_<eye>`, a dark one, and every kind of bad file."
    d = tmp_path_factory.mktemp('day')
    (d/'1_left.jpeg').write_bytes(photos['retina.jpeg']); (d/'1_right.png').write_bytes(photos['small.png'])
    (d/'2_left.jpeg').write_bytes(photos['dark.jpeg']); (d/'3_right.jpeg').write_bytes(photos['small.jpeg'])
    for i, (name, (data, _)) in enumerate(bad_inputs.items()):
        (d/f'bad{i}_{"left" if i % 2 else "right"}{".gif" if "GIF" in name else ".jpeg"}').write_bytes(data)
    return d

def test_file_list_with_bad_files(model_run, day, tmp_path, bad_inputs):
    "Every file gets a row; the bad ones carry their error and are ungradable; patients get decisions."
    files = sorted(day.iterdir()) + [day/'no_such_photo.jpeg']
    rows = _run(model_run/'model', files, tmp_path/'p.csv')
    photos = [r for r in rows if r['kind'] == 'photo']; pats = [r for r in rows if r['kind'] == 'patient']
    assert list(rows[0]) == COLUMNS and len(photos) == len(files)
    bad = [r for r in photos if Path(r['file']).name.startswith('bad') or 'no_such' in r['file']]
    assert len(bad) == len(bad_inputs) + 1
    assert all(r['error'] and r['outcome'] == 'ungradable' and r['gradable'] == 'False' for r in bad)
    good = {Path(r['file']).name: r for r in photos if r not in bad}
    assert good['2_left.jpeg']['outcome'] == 'ungradable' and good['2_left.jpeg']['error'] == ''   # dark: no verdict
    assert all(good[f]['outcome'] in ('refer', 'no_referral') for f in ('1_left.jpeg', '1_right.png', '3_right.jpeg'))
    p = {r['patient']: r for r in pats}
    assert p['2']['outcome'] == 'refer' and 'left eye ungradable' in p['2']['reasons']
    assert p['1']['eye'] == 'left+right' and p['1']['outcome'] in ('refer', 'no_referral')

def test_same_answers_as_the_service(model_run, day, tmp_path):
    "Probability, gradability and outcome equal the service's `ServedModel.predict` on the same bytes."
    from dr_detection.serve import ServedModel
    sm = ServedModel(model_run/'model', threads=1)
    rows = [r for r in _run(model_run/'model', [day], tmp_path/'p.csv') if r['kind'] == 'photo' and not r['error']]
    assert len(rows) == 4
    for r in rows:
        s = sm.predict(Path(r['file']).read_bytes())
        assert abs(float(r['probability']) - s['probability']) <= 1e-6
        assert (r['gradable'] == 'True') == s['gradable'] and r['outcome'] == s['outcome']

def test_fullres_folder(shared, tmp_path):
    "The real full-resolution photos: one row each, none unreadable, a patient row per EyePACS-named photo group."
    model = Path(__file__).resolve().parent.parent/'runs'/'demo'/'model'
    if not (model/'model.json').exists(): pytest.skip('no demo model (make demo)')
    s = predict_files(model, [shared/'fullres'], tmp_path/'f.csv', progress=False)
    n = len(photo_files(shared/'fullres'))
    rows = list(csv.DictReader(open(tmp_path/'f.csv')))
    assert s['photos'] == n == sum(r['kind'] == 'photo' for r in rows) and n >= 20 and s['errors'] == 0
    named = {r['patient'] for r in rows if r['kind'] == 'photo' and r['patient']}
    assert named and {r['patient'] for r in rows if r['kind'] == 'patient'} == named
    assert all(r['outcome'] in ('refer', 'no_referral', 'ungradable') for r in rows)
