"02_preprocess on real photos (skipped where ../shared/data is absent): crops of the full-resolution photos are centred and filled, a wrong crop fails the same check, every real photo goes through; and the module stays light for the service."
import collections, json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import pytest
from PIL import Image
from dr_detection.fundus import decode
from dr_detection.preprocess import Disc, PrepParams, fill_stats, locate_disc, prepare, prepare_file

SIZE = 256
PARAMS = PrepParams(size=SIZE)
# a good crop: the inscribed circle is retina (except caps the camera clipped), no black margin at mid-height,
# and the retina's edge follows the inscribed circle on every row
MIN_FILL, MAX_MARGIN, MAX_EDGE_ERROR = 0.99, 0.02, 0.022

def crop_ok(img:Image.Image) -> tuple[bool, dict]:
    s = fill_stats(img)
    ok = s['circle_fill'] >= MIN_FILL and max(s['margin_left'], s['margin_right']) <= MAX_MARGIN and s['edge_error'] <= MAX_EDGE_ERROR
    return ok, s

def fullres(shared): return sorted(p for p in (shared/'fullres').glob('*/*') if p.suffix.lower() in ('.jpg', '.jpeg'))

def test_fullres_crops_centred_and_filled(shared):
    files = fullres(shared)
    assert len(files) >= 20
    bad = {}
    for f in files:
        out, d = prepare_file(f, PARAMS, with_disc=True)
        ok, s = crop_ok(out)
        assert out.size == (SIZE, SIZE) and out.mode == 'RGB'
        if d.method != 'fit' or not ok: bad[f.name] = (d.method, d.reason, s)
    assert not bad, bad

@pytest.mark.parametrize('name,move', [('shifted left 10% of r', lambda d: Disc(d.cx - 0.1*d.r, d.cy, d.r)),
                                       ('shifted right 10%', lambda d: Disc(d.cx + 0.1*d.r, d.cy, d.r)),
                                       ('shifted down 10%', lambda d: Disc(d.cx, d.cy + 0.1*d.r, d.r)),
                                       ('10% too large', lambda d: Disc(d.cx, d.cy, 1.1*d.r)),
                                       ('10% too small', lambda d: Disc(d.cx, d.cy, 0.9*d.r))])
def test_wrong_crop_fails_the_check(shared, name, move):
    "The check has teeth: the same photos cropped around a deliberately wrong disc fail it, every one."
    for f in fullres(shared):
        im = decode(f, SIZE)
        d = locate_disc(im)
        assert crop_ok(prepare(im, PARAMS, disc=d))[0]
        ok, s = crop_ok(prepare(im, PARAMS, disc=move(d)))
        assert not ok, (f.name, name, s)

def _survey(f):
    try:
        out, d = prepare_file(f, PARAMS, with_disc=True)
        return str(f), d.method, d.reason.split(' (')[0], crop_ok(out)[0]
    except Exception as e: return str(f), 'error', f'{type(e).__name__}: {e}', False

def test_every_real_photo(shared):
    "Every photo under ../shared/data goes through; fallbacks are counted by folder and reason (run with -s to see them)."
    folders = ['fullres/eyepacs', 'fullres/idrid', 'eyepacs-1024/train', 'eyepacs-sample10/train', 'eyepacs-256/train', 'eyepacs-64/train']
    files = [p for d in folders for p in sorted((shared/d).iterdir()) if p.suffix.lower() in ('.jpg', '.jpeg')]
    with ProcessPoolExecutor(2) as ex: res = list(ex.map(_survey, files, chunksize=32))
    summary = {}
    for d in folders:
        r = [x for x in res if Path(x[0]).parent == (shared/d)]
        summary[d] = dict(photos=len(r), methods=dict(collections.Counter(x[1] for x in r)),
                          fallback_reasons=dict(collections.Counter(x[2] for x in r if x[1] != 'fit').most_common()),
                          crop_check_passed=sum(x[3] for x in r))
    print(json.dumps(summary, indent=1))
    assert not [x for x in res if x[1] == 'error'], [x for x in res if x[1] == 'error'][:5]
    for d in ['fullres/eyepacs', 'fullres/idrid']: assert summary[d]['methods'] == {'fit': summary[d]['photos']}
    s = summary['eyepacs-1024/train']
    assert s['methods'].get('fit', 0) >= 0.98*s['photos']          # natural EyePACS photos: the circle fit almost always holds
    assert s['crop_check_passed'] >= 0.95*s['photos']
