"Issue 14 (service hardening) and issue 12 (outcomes, /screen) in-process with FastAPI's TestClient: each test failed before its fix."
import io, json, re, tempfile
import numpy as np
import pytest
from PIL import Image, ImageFilter
from fastapi.testclient import TestClient
from conftest import ROOT, jpeg
from dr_detection.serve import create_app

@pytest.fixture(scope='module')
def client(model_run):
    with TestClient(create_app(model_run/'model', max_upload_mb=1, concurrency=2)) as c: yield c

def post(c, data, name='photo.jpeg', field='file', url='/predict'):
    return c.post(url, files={field: (name, data, 'application/octet-stream')})

@pytest.fixture(scope='module')
def ungradable(retina) -> dict:
    "A dark photo and a blurred one of the sample retina (both fail the quality check)."
    r = retina.resize((700, 700))
    return {'dark': jpeg(Image.fromarray((np.asarray(r) * 0.05).astype(np.uint8))),
            'blurred': jpeg(r.filter(ImageFilter.GaussianBlur(12)))}

# ---- issue 12: three outcomes, /screen

@pytest.mark.parametrize('kind', ['dark', 'blurred'])
def test_ungradable_photo_is_never_no_referral(client, ungradable, kind):
    j = post(client, ungradable[kind]).json()
    assert j['gradable'] is False and j['outcome'] == 'ungradable' and j['positive'] is None and j['label'] == 'Ungradable'
    b = client.post('/predict/batch', files=[('files', ('x.jpeg', ungradable[kind]))]).json()['results'][0]['result']
    assert b['outcome'] == 'ungradable'

@pytest.mark.parametrize('kind', ['dark', 'blurred'])
def test_screen_ungradable_eye_refers_patient(client, ungradable, photos, kind):
    r = client.post('/screen', files={'left': ('l.jpeg', ungradable[kind]), 'right': ('r.jpeg', photos['retina.jpeg'])},
                    data={'patient_id': 'p-17'})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j['patient_id'] == 'p-17' and j['left']['outcome'] == 'ungradable' and j['right']['gradable'] is True
    assert j['decision']['outcome'] == 'refer' and 'left eye ungradable' in j['decision']['reason']
    one = client.post('/screen', files={'right': ('d.jpeg', ungradable[kind])}).json()
    assert one['left'] is None and one['right']['outcome'] == 'ungradable' and one['decision']['outcome'] != 'no_referral'

def test_screen_both_gradable_and_errors(client, photos):
    j = client.post('/screen', files={'left': ('l.jpeg', photos['small.jpeg']), 'right': ('r.png', photos['small.png'])}).json()
    d, eyes = j['decision'], [j['left'], j['right']]
    assert all(e['gradable'] for e in eyes) and d['screening']['eye_rule'] in ('max', 'mean')
    assert d['outcome'] == ('refer' if max(e['probability'] for e in eyes) >= d['threshold'] else 'no_referral')
    r = client.post('/screen', files={'left': ('l.txt', b'not a photo')})
    assert r.status_code == 415 and r.json()['detail'].startswith('the left photo')
    r = client.post('/screen', files={'photo': ('x.jpeg', photos['small.jpeg'])})
    assert r.status_code == 422 and '`left`' in r.json()['detail']

# ---- issue 14

PATHLIKE = re.compile(r'(?:^|[\s\'"(=,;])(?:~?/|[A-Za-z]:[\\/]|\.\.?/)[\w.~-]')

def _strings(x):
    if isinstance(x, dict): yield from (s for v in x.values() for s in _strings(v))  # (keys: /openapi.json's are routes)
    elif isinstance(x, list): yield from (s for v in x for s in _strings(v))
    elif isinstance(x, str): yield x

def test_no_paths_in_any_json_answer(model_run, photos, tmp_path):
    "Item 3: with metrics.json beside the model (its dataset.run_dir an absolute path), no JSON answer holds a path."
    m = json.loads((model_run/'metrics.json').read_text())
    (tmp_path/'metrics.json').write_text(json.dumps({**m, 'dataset': {'run_dir': str(model_run)}, 'test': {**m['test'], 'where': str(ROOT)}}))
    import shutil; shutil.copytree(model_run/'model', tmp_path/'model')
    with TestClient(create_app(tmp_path/'model')) as c:
        answers = [c.get(u) for u in ('/health', '/ready', '/model', '/openapi.json', '/nope')]
        answers += [post(c, d) for d in (photos['small.jpeg'], b'', b'%PDF', photos['retina.jpeg'][:3000])]
        answers += [c.post('/predict/batch', files=[('files', ('a', photos['small.jpeg'])), ('files', ('b', b'x'))]),
                    c.post('/screen', files={'left': ('a', photos['small.jpeg'])}), c.post('/predict', json={})]
    leaks = [(a.request.url.path, s) for a in answers for s in _strings(a.json())
             if PATHLIKE.search(s) or str(tmp_path) in s or str(ROOT) in s or tempfile.gettempdir() + '/' in s]
    assert not leaks, leaks
    j = answers[2].json()
    assert j['metrics']['test']['auc'] == 0.5 and 'dataset' not in j['metrics'] and 'where' not in j['metrics']['test']

def test_openapi_uploads_are_binary(client):
    "Item 4: the upload fields are OpenAPI 3.0 `format: binary` (Swagger UI 4's file picker); the batch has min/maxItems."
    spec = client.get('/openapi.json').json()
    assert spec['openapi'].startswith('3.0') and 'contentMediaType' not in json.dumps(spec)
    schemas = spec['components']['schemas']
    body = lambda route: schemas[spec['paths'][route]['post']['requestBody']['content']['multipart/form-data']['schema']['$ref'].split('/')[-1]]
    assert body('/predict')['properties']['file'] == {'type': 'string', 'format': 'binary', 'title': 'File',
                                                        'description': body('/predict')['properties']['file']['description']}
    files = body('/predict/batch')['properties']['files']
    assert files['items']['format'] == 'binary' and (files['minItems'], files['maxItems']) == (1, 16)
    assert {body('/screen')['properties'][k].get('format') or body('/screen')['properties'][k]['anyOf'][0].get('format')
            for k in ('left', 'right')} == {'binary'}

def test_batch_body_capped_early(model_run, photos):
    "Item 6: a batch body over DR_MAX_BATCH_MB is refused with 413, by Content-Length at once and while a chunked body streams."
    with TestClient(create_app(model_run/'model', max_upload_mb=1, max_batch_mb=2)) as c:
        big = [('files', (f'{i}.jpeg', b'\xff\xd8' + bytes(700_000))) for i in range(4)]  # 4 x 0.7 MB, each under 1 MB
        r = c.post('/predict/batch', files=big)
        assert r.status_code == 413 and '2 MB' in r.json()['detail']
        def body():  # (that reading stops early is checked on a real server: tests/test_serve_slow.py)
            yield b'--zz\r\nContent-Disposition: form-data; name="files"; filename="a.jpeg"\r\n\r\n'
            for _ in range(200): yield b'x' * 65536  # 12.5 MB
        r = c.post('/predict/batch', content=body(), headers={'content-type': 'multipart/form-data; boundary=zz'})
        assert r.status_code == 413
        ok = c.post('/predict/batch', files=[('files', ('a.jpeg', photos['small.jpeg']))] * 2)
        assert [i['status'] for i in ok.json()['results']] == [200, 200]

def test_security_headers_and_plain_errors(client, photos):
    "Item 7: CSP, nosniff and X-Frame-Options everywhere; the page's CSP allows no inline script but its own; no exception text."
    page = client.get('/')
    csp = page.headers['content-security-policy']
    assert "script-src  'sha256-" in csp and 'unsafe-inline' not in csp and "frame-ancestors 'none'" in csp
    for r in (page, client.get('/health'), client.get('/docs'), post(client, b''), client.get('/nope')):
        assert r.headers['x-content-type-options'] == 'nosniff' and r.headers['x-frame-options'] == 'DENY'
        assert 'content-security-policy' in r.headers
    for data in (photos['retina.jpeg'][:len(photos['retina.jpeg'])//2], photos['retina.jpeg'][:3000]):
        d = post(client, data).json()['detail']
        assert not re.search(r'\b\w*(Error|Exception)\b|Traceback|image file is', d), d

def test_unexpected_error_is_plain_500(model_run, monkeypatch, photos):
    with TestClient(create_app(model_run/'model'), raise_server_exceptions=False) as c:
        monkeypatch.setattr(c.app.state.model, 'predict', lambda *a, **k: 1/0)
        r = post(c, photos['small.jpeg'])
        assert r.status_code == 500 and 'ZeroDivision' not in r.text and 'log' in r.json()['detail']

def test_queue_setting_in_metrics(model_run):
    "Item 8: the queue length is a setting, exported in /metrics."
    with TestClient(create_app(model_run/'model', max_queue=3, concurrency=2)) as c:
        m = c.get('/metrics').text
    assert 'dr_queue_max 3.0' in m and 'dr_queue_workers 2.0' in m and 'dr_queue_waiting 0.0' in m

# ---- issue 14 item 5 (decoding in fundus/quality, HC), through the service

def test_odd_images_decoded_right(client, retina):
    "16-bit PNG = its 8-bit twin (within 1e-3); EXIF-rotated = upright (quality and probability); greyscale -> not gradable."
    r = retina.resize((600, 600)); grey = r.convert('L')
    def png(img, **kw): b = io.BytesIO(); img.save(b, 'PNG', **kw); return b.getvalue()
    a8, a16 = post(client, png(grey)).json(), post(client, png(Image.fromarray(np.asarray(grey, np.uint16) * 257))).json()
    assert abs(a8['probability'] - a16['probability']) <= 1e-3 and a8['reasons'] == a16['reasons']
    assert a8['gradable'] is False and 'greyscale' in a8['reasons'] and a8['outcome'] == 'ungradable'
    up = r.crop((0, 60, 600, 540))  # 600 x 480, upright
    ex = Image.Exif(); ex[0x0112] = 6  # stored turned a quarter: viewers (and the service) rotate it back
    rot = jpeg(up.transpose(Image.Transpose.ROTATE_90), quality=95, exif=ex)
    a, b = post(client, jpeg(up, quality=95)).json(), post(client, rot).json()
    assert (a['quality']['width'], a['quality']['height']) == (b['quality']['width'], b['quality']['height']) == (600, 480)
    assert a['reasons'] == b['reasons'] and abs(a['probability'] - b['probability']) <= 0.02
