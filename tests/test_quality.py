"01_quality: each automatic check on crafted inputs, the policy, the demo truth, and every real photo of ../shared/data (skipped where absent)."
import io, json, time
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter
from dr_detection.config import QualityConfig, load_config
from dr_detection.data import run_data, demo_dir
from dr_detection.fundus import decode, find_disc, retina_mask
from dr_detection.preprocess import PrepParams, prepare_file
from dr_detection.quality import (REASONS, QualityParams, apply_policy, check_files, check_image, eyeq_agreement, read_eyeq,
                                  run_quality)
from dr_detection.synthetic import draw_document, draw_fundus, draw_outdoor

def jpeg(img, q=90) -> bytes:
    img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))
    b = io.BytesIO(); img.save(b, 'JPEG', quality=q); return b.getvalue()

@pytest.fixture(scope='module')
def fundus():
    "A synthetic fundus photograph (good quality) as a PIL image."
    return draw_fundus(np.random.default_rng(3), (1200, 900), grade=0, clip=False)

def test_good_fundus_passes_as_path_bytes_and_pil(fundus, tmp_path):
    p = tmp_path/'good.jpeg'; p.write_bytes(jpeg(fundus))
    results = [check_image(src) for src in (p, str(p), p.read_bytes(), fundus)]
    for r in results: assert r['ok'] and r['reasons'] == [], r
    assert results[0]['measures']['width'] == 1200 and results[0]['measures']['height'] == 900
    assert abs(results[0]['measures']['focus'] - results[2]['measures']['focus']) < 1e-6

def test_truncated_jpeg(fundus, tmp_path):
    data = jpeg(fundus)
    for cut in (0.1, 0.5, 0.9):
        (tmp_path/'t.jpeg').write_bytes(data[:int(len(data)*cut)])
        r = check_image(tmp_path/'t.jpeg')
        assert not r['ok'] and r['reasons'] == ['truncated'] and ('truncated' in r['error'] or 'broken' in r['error']), r

def test_zero_byte_and_not_an_image(tmp_path):
    (tmp_path/'empty.jpeg').write_bytes(b'')
    (tmp_path/'text.jpeg').write_text('not a photo')
    for p in (tmp_path/'empty.jpeg', tmp_path/'text.jpeg', tmp_path/'missing.jpeg'):
        r = check_image(p)
        assert not r['ok'] and r['reasons'] == ['unreadable'], r
    assert check_image(b'')['reasons'] == ['unreadable']

def test_black_and_dark_images(fundus):
    assert check_image(jpeg(np.zeros((900, 1200, 3))))['reasons'] == ['too_dark']
    dark = (np.asarray(fundus, np.float32)*0.08).astype(np.uint8)
    r = check_image(jpeg(dark))
    assert r['reasons'] == ['too_dark'] and r['measures']['brightness'] < QualityConfig().dark_max, r

def test_washed_out(fundus):
    a = np.asarray(fundus, np.float32)
    m = retina_mask(np.asarray(fundus))[..., None]
    r = check_image(jpeg(np.where(m, 255 - (255 - a)*0.08, a)))
    assert r['reasons'] == ['washed_out'], r

def test_blurred_image(fundus):
    r = check_image(fundus.filter(ImageFilter.GaussianBlur(12)))
    assert r['reasons'] == ['blurred'] and r['measures']['focus'] < QualityConfig().focus_min, r

def test_non_fundus_images():
    rng = np.random.default_rng(0)
    for img in (draw_document(rng), draw_outdoor(rng), Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)),
                Image.new('RGB', (800, 600), (128, 128, 128))):
        r = check_image(jpeg(img))
        assert r['reasons'] == ['no_retina'], r

def test_off_centre_and_small(fundus):
    a = np.asarray(fundus)
    shifted = np.pad(a, ((0, 0), (0, 900), (0, 0)))[:, 750:]  # the disc's centre near the left border
    assert check_image(jpeg(shifted))['reasons'][0] == 'off_centre'
    assert check_image(jpeg(a[::25, ::25]))['reasons'][0] == 'too_small'

def test_retina_mask_and_disc(fundus):
    a = np.asarray(decode(fundus, 256, 'long', exif=False))
    d = find_disc(a)
    assert d is not None and d['fit'] > 0.95 and abs(d['cx'] - a.shape[1]/2) < 0.05*a.shape[1]
    m = retina_mask(a)
    assert m.shape == a.shape[:2] and 0.3 < m.mean() < 0.8
    assert retina_mask(a, bin=2).shape == (a.shape[0]//2, a.shape[1]//2)

def test_thresholds_come_from_config():
    params = QualityParams.of(load_config().quality)
    kw = params.model_dump()
    assert kw['focus_min'] == QualityConfig().focus_min and 'workers' not in kw and 'keep_eyeq' not in kw
    assert params == QualityParams()
    strict = check_image(jpeg(np.zeros((300, 400, 3))), params.model_copy(update={'dark_max': -1}))
    assert 'too_dark' not in strict['reasons']

def test_policy():
    q = pd.Series([0, 1, 2, pd.NA, pd.NA, 0], dtype='Int64')
    auto = pd.Series([False, True, True, True, False, True]); dec = pd.Series([True]*5 + [False])
    assert apply_policy(q, auto, dec, QualityConfig()).tolist() == [True, True, False, True, False, False]
    assert apply_policy(q, auto, dec, QualityConfig(labelled='auto')).tolist() == [False, True, True, True, False, False]
    assert apply_policy(q, auto, dec, QualityConfig(unlabelled='reject')).tolist() == [True, True, False, False, False, False]

def test_demo_run_rejects_bad_kinds_with_the_right_reason(tmp_path):
    cfg = load_config(overrides={'data.demo_patients': 6})
    run_data(cfg, tmp_path)
    q = run_quality(cfg, tmp_path)
    assert (tmp_path/'quality.csv').exists() and (tmp_path/'rejected_montage.png').exists()
    rep = json.loads((tmp_path/'quality_report.json').read_text())
    assert rep['images'] == len(q) and rep['kept'] + rep['rejected'] == len(q)
    t = q.merge(pd.read_csv(demo_dir(tmp_path)/'synthetic_truth.csv').rename(columns={'image': 'id'}), on='id')
    expected = dict(dark='too_dark', blurred='blurred', off_centre='off_centre', truncated='truncated', non_fundus='no_retina')
    good, bad = t[t.kind == 'good'], t[t.kind != 'good']
    assert good.auto_ok.all() and good.keep.all()
    assert set(bad.kind) == set(expected) and not bad.auto_ok.any() and not bad.keep.any()
    assert (bad.quality_reasons.str.split(';').str[0] == bad.kind.map(expected)).all(), bad[['id', 'kind', 'quality_reasons']]
    csv = pd.read_csv(tmp_path/'quality.csv')
    assert {'eyeq_quality', 'auto_ok', 'quality_reasons', 'keep', 'focus', 'brightness'} <= set(csv.columns)

def png(a) -> bytes:
    b = io.BytesIO(); Image.fromarray(a).save(b, 'PNG'); return b.getvalue()

def test_16bit_png_is_scaled_not_clipped(retina):
    "A 16-bit greyscale PNG gives the 8-bit answer (measures within 1e-3, the same model input), not `washed_out`."
    g8 = np.asarray(retina.convert('L'))
    p8, p16 = png(g8), png(g8.astype(np.uint16)*257)
    assert Image.open(io.BytesIO(p16)).mode.startswith('I')      # really 16 bit
    q8, q16 = check_image(p8), check_image(p16)
    assert q16['reasons'] == q8['reasons'] and 'washed_out' not in q16['reasons'], q16
    for k, v in q8['measures'].items(): assert abs(q16['measures'][k] - v) <= 1e-3, (k, v, q16['measures'][k])
    for size in (64, 256):
        a16, a8 = (np.asarray(prepare_file(p, PrepParams(size=size))) for p in (p16, p8))
        assert np.array_equal(a16, a8)

def test_exif_rotated_photo_is_checked_upright(fundus):
    "A photo stored sideways with an EXIF orientation tag gets the verdict and measures of the upright photo."
    upright = jpeg(fundus)
    for tag, turn in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)):
        b = io.BytesIO(); ex = Image.Exif(); ex[0x0112] = tag
        fundus.transpose(turn).save(b, 'JPEG', quality=90, exif=ex)
        q, q0 = check_image(b.getvalue()), check_image(upright)
        assert (q['measures']['width'], q['measures']['height']) == (1200, 900), (tag, q['measures'])
        assert q['ok'] == q0['ok'] and q['reasons'] == q0['reasons']
        for k in ('centre_offset', 'field_frac', 'brightness', 'disc_fit'):
            v, v0 = q['measures'][k], q0['measures'][k]
            assert abs(v - v0) < 0.02*max(1, abs(v0)), (tag, k, v, v0)

def test_greyscale_photo_of_a_fundus_is_not_gradable(retina, fundus):
    for im in (retina, fundus):
        assert check_image(jpeg(im))['ok']
        for grey in (im.convert('L'), im.convert('L').convert('RGB')):   # an L-mode file, and R == G == B
            for data in (jpeg(grey), png(np.asarray(grey))):
                r = check_image(data)
                assert not r['ok'] and 'greyscale' in r['reasons'] and r['measures']['colour'] < 0.01, r

BROKEN_CROPS = ['15045_left', '13673_left']  # eyepacs-256 crops where the third party's crop missed the disc

def test_every_real_photo_goes_through(shared):
    "All of ../shared/data (about 8,000 photos) without an exception, decoded small; the broken 256 px crops rejected."
    paths = sorted(p for p in shared.rglob('*') if p.suffix.lower() in ('.jpeg', '.jpg', '.png', '.tif', '.tiff'))
    assert len(paths) > 1000
    t = time.perf_counter()
    r = check_files(paths, QualityParams.of(load_config().quality), progress=False)
    assert time.perf_counter() - t < 60
    r['id'], r['folder'] = [p.stem for p in paths], [p.parent.parent.name if p.parent.name == 'train' else p.parent.name for p in paths]
    assert len(r) == len(paths) and r.quality_error.eq('').all(), r[r.quality_error != '']  # every file decodes
    assert set(';'.join(r.quality_reasons).split(';')) - {''} <= set(REASONS)
    crops = r[(r.folder == 'eyepacs-256') & r.id.isin(BROKEN_CROPS)]
    assert len(crops) == 2 and not crops.auto_ok.any(), crops
    # the check is conservative: few gradable photos are thrown away
    e = read_eyeq([shared/'labels/Label_EyeQ_train.csv', shared/'labels/Label_EyeQ_test.csv'])
    for folder in ('eyepacs-1024', 'eyepacs-64'):
        m = r[r.folder == folder].merge(e, on='id')
        ag = eyeq_agreement(m.eyeq_quality, m.auto_ok)
        assert ag['gradable_pass_rate'] > 0.97 and ag['reject_recall'] > 0.4, (folder, ag)
    # issue 12: gradable diseased eyes are not thrown away more than healthy ones (1024 px photos, every photo)
    grades = pd.read_csv(shared/'labels/trainLabels.csv').rename(columns={'image': 'id', 'level': 'grade'})
    m = r[r.folder == 'eyepacs-1024'].merge(grades, on='id').merge(e, on='id', how='left')
    rej = ~m.auto_ok
    dr, nodr = rej[m.grade >= 3].mean(), rej[m.grade == 0].mean()
    gradable, reject = m.eyeq_quality.isin([0, 1]), m.eyeq_quality == 2
    kept_bad, caught = rej[gradable].mean(), rej[reject].mean()
    assert dr <= 1.5*nodr and kept_bad <= 0.03 and caught >= 0.75, (dr, nodr, kept_bad, caught)
