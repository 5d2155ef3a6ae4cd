"The service in-process with FastAPI's TestClient: every endpoint, every bad input, the settings, the served probability."
import base64, io, math
import numpy as np
import pytest
from PIL import Image
from fastapi.testclient import TestClient
from conftest import BAD_INPUTS, SHARED
from dr_detection.serve import create_app, main

@pytest.fixture(scope='module')
def client(model_run):
    app = create_app(model_run/'model', max_upload_mb=1, concurrency=2)
    with TestClient(app) as c: yield c

def post(c, data, name='photo.jpeg', field='file', **kw):
    return c.post('/predict', files={field: (name, data, 'application/octet-stream')}, **kw)

def test_health_ready_page(client):
    assert client.get('/health').json() == {'status': 'ok'}
    r = client.get('/ready'); assert r.status_code == 200 and r.json()['ready'] is True
    page = client.get('/')
    assert page.status_code == 200 and 'text/html' in page.headers['content-type']
    assert 'screening aid' in page.text.lower() and 'id="file"' in page.text and 'http://' not in page.text.replace('http://www.w3.org', '')

def test_ready_is_503_before_warmup(model_run):
    app = create_app(model_run/'model')
    c = TestClient(app)  # no `with`: the lifespan (warm-up) has not run
    r = c.get('/ready'); assert r.status_code == 503 and r.json()['ready'] is False
    assert c.get('/health').status_code == 200

@pytest.mark.parametrize('name', ['retina.jpeg', 'small.jpeg', 'small.png'])
def test_predict(client, photos, name):
    r = post(client, photos[name], name)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j['label'] in ('DR', 'No DR') and 0 <= j['probability'] <= 1 and j['positive'] == (j['probability'] >= j['threshold'])
    assert j['label'] == ('DR' if j['positive'] else 'No DR') and j['outcome'] == ('refer' if j['positive'] else 'no_referral')
    assert j['filename'] == name and j['model_version'].startswith('resnet18-') and j['heatmap_png'] is None
    assert j['gradable'] is True and j['reasons'] == [] and j['quality']
    assert j['timing_ms']['total'] >= j['timing_ms']['inference'] > 0

def test_predict_explain(client, photos):
    j = client.post('/predict?explain=true', files={'file': ('r.jpeg', photos['small.jpeg'])}).json()
    img = Image.open(io.BytesIO(base64.b64decode(j['heatmap_png'])))
    assert img.format == 'PNG' and img.size == (64, 64)

def test_explain_uses_fixed_model_scale(client):
    "The heatmap's scale is the model's (04_evaluate's cam_scale, else from cam_bias), never the photo's own min-max."
    from dr_detection.infer import model_cam_scale
    m = client.app.state.model
    assert m.cam_scale == model_cam_scale(m.meta) > 0

def _photos_and_real(photos) -> dict:
    "The test photos, and the EyePACS camera photos of ../shared/data/fullres when present."
    real = sorted((SHARED/'fullres').glob('*/*.jp*g')) if (SHARED/'fullres').is_dir() else []
    return {**photos, **{p.name: p.read_bytes() for p in real}}

def test_served_probability_is_infer(model_run, photos):
    "/predict's probability is 03a_infer's `prepare_photo` + `run_model` on the same bytes, and the same twice."
    from dr_detection.infer import load_meta, onnx_path, ort_session, prepare_photo, run_model, to_input
    meta = load_meta(model_run/'model'); sess = ort_session(onnx_path(model_run/'model', meta), threads=1)
    with TestClient(create_app(model_run/'model')) as c:  # the default upload limit: real camera photos are > 1 MB
        for name, data in _photos_and_real(photos).items():
            served = [post(c, data, name).json()['probability'] for _ in range(2)]
            ref = float(run_model(sess, meta, to_input(prepare_photo(data, meta), meta)[None])[0][0])
            assert served[0] == served[1] and abs(served[0] - ref) <= 1e-6, (name, served, ref)

def test_same_answer_alone_or_under_load(client, photos):
    "A photo alone in the service runs on the all-cores session, photos side by side on the one-thread one: the answers are identical."
    from concurrent.futures import ThreadPoolExecutor
    m = client.app.state.model
    assert m.solo is not None
    data = photos['retina.jpeg']
    alone = post(client, data).json()['probability']
    calls = []
    run = m.run
    m.run = lambda x, alone=False: (calls.append(alone), run(x, alone))[1]
    try:
        with ThreadPoolExecutor(4) as ex: crowd = [r.json()['probability'] for r in ex.map(lambda _: post(client, data), range(8))]
    finally: m.run = run
    assert False in calls  # some of the 8 did run side by side
    assert crowd == [alone] * 8

def _formats(retina) -> dict:
    "The sample retina in every accepted non-JPEG form, and EXIF-rotated."
    r, out = retina.resize((600, 600)), {}
    for name, img, fmt, kw in [('png', r, 'PNG', {}), ('tiff', r, 'TIFF', {}), ('bmp', r, 'BMP', {}), ('webp', r, 'WEBP', {}),
                               ('grey png', r.convert('L'), 'PNG', {}), ('rgba png', r.convert('RGBA'), 'PNG', {}),
                               ('16-bit png', Image.fromarray(np.asarray(r.convert('L'), np.uint16) * 257), 'PNG', {})]:
        b = io.BytesIO(); img.save(b, fmt, **kw); out[name] = b.getvalue()
    ex = Image.Exif(); ex[0x0112] = 6
    b = io.BytesIO(); r.crop((0, 0, 600, 450)).save(b, 'PNG', exif=ex); out['png rotated'] = b.getvalue()
    return out

def test_decode_once_changes_nothing(client, photos, retina):
    "Where 01's check and 02's preparation would decode the same pixels, they are decoded once: same results."
    from dr_detection.quality import check_image
    from dr_detection.serve import decode_once
    m = client.app.state.model
    once = lambda data: decode_once(data, m.size, m.meta.quality.decode_size)
    files = sorted((SHARED/'fullres').glob('*/*.jp*g'))[:6] if (SHARED/'fullres').is_dir() else []
    other = _formats(retina)
    uploads = [p.read_bytes() for p in files] + [photos['retina.jpeg'], photos['small.png'], *other.values()]
    shared = 0
    for data in uploads:
        first = once(data); shared += first is not None
        q, ref = m.quality(data if first is None else first), check_image(data, m.meta.quality)
        assert (q['ok'], q['reasons']) == (ref['ok'], ref['reasons'])
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(q['measures'].values(), ref['measures'].values()))
        assert np.array_equal(np.asarray(m.prepare(data, first)), np.asarray(m.prepare(data)))
    assert all(once(d) is not None for d in [photos['small.png'], *other.values()])  # every non-JPEG: decoded once
    assert once(photos['retina.jpeg'][:5000]) is None

def test_ungradable_still_answered(client, photos):
    "An ungradable photo: outcome 'ungradable', no verdict (positive null, label not DR/No DR), its probability for information."
    j = post(client, photos['dark.jpeg']).json()
    assert j['gradable'] is False and j['reasons'] and j['outcome'] == 'ungradable'
    assert j['label'] == 'Ungradable' and j['positive'] is None and 0 <= j['probability'] <= 1

@pytest.mark.parametrize('name', BAD_INPUTS)
def test_bad_inputs_4xx(client, bad_inputs, name):
    data, status = bad_inputs[name]
    r = post(client, data)
    assert r.status_code == status, r.text
    assert isinstance(r.json()['detail'], str) and len(r.json()['detail']) > 10

def test_wrong_field_name(client, photos):
    r = post(client, photos['small.jpeg'], field='image')
    assert r.status_code == 422 and '`file`' in r.json()['detail']
    assert client.post('/predict').status_code == 422
    assert client.post('/predict', json={'file': 'x'}).status_code == 422

def test_upload_over_limit_413(client):
    r = post(client, b'\xff\xd8\xff' + bytes(int(1.5 * 2**20)))
    assert r.status_code == 413 and '1 MB' in r.json()['detail']

def test_upload_over_limit_chunked_stops_reading(client):
    "Without Content-Length the body is counted as it streams and refused at the limit (that reading stops early is checked on a real server)."
    def body():
        for _ in range(40): yield b'x' * 65536  # 2.5 MB, over the 1 MB limit
    r = client.post('/predict', content=body(), headers={'content-type': 'multipart/form-data; boundary=xyz'})
    assert r.status_code == 413

def test_other_requests_unaffected_by_limit(client):
    assert client.get('/model').status_code == 200

def test_batch(client, photos):
    files = [('files', ('a.jpeg', photos['small.jpeg'])), ('files', ('b.txt', b'hello')), ('files', ('c.png', photos['small.png'])),
             ('files', ('d.jpeg', b''))]
    r = client.post('/predict/batch', files=files)
    assert r.status_code == 200
    res = r.json()['results']
    assert [i['filename'] for i in res] == ['a.jpeg', 'b.txt', 'c.png', 'd.jpeg']
    assert [i['status'] for i in res] == [200, 415, 200, 400]
    assert res[0]['result']['label'] in ('DR', 'No DR') and res[1]['error'] and res[1]['result'] is None

def test_batch_limits(model_run, photos):
    app = create_app(model_run/'model', max_batch_files=2)
    with TestClient(app) as c:
        r = c.post('/predict/batch', files=[('files', (f'{i}.jpeg', photos['small.jpeg'])) for i in range(3)])
        assert r.status_code == 413 and 'too many files' in r.json()['detail']
        assert c.post('/predict/batch', files={'file': ('a.jpeg', photos['small.jpeg'])}).status_code == 422

def test_model_endpoint(client):
    j = client.get('/model').json()
    assert j['input_size'] == 64 and j['class_names'] == ['No DR', 'DR'] and j['threshold'] == 0.5
    assert j['metrics']['test']['auc'] == 0.5 and j['preprocess']['size'] == 64 and 'dark_max' in j['quality']

def test_metrics_prometheus(client, photos):
    post(client, photos['small.jpeg']); post(client, b'')
    r = client.get('/metrics')
    assert r.status_code == 200 and r.headers['content-type'].startswith('text/plain')
    t = r.text
    assert 'dr_http_requests_total{method="POST",route="/predict",status="200"}' in t
    assert 'dr_http_requests_total{method="POST",route="/predict",status="400"}' in t
    assert 'dr_http_request_duration_seconds_bucket' in t and 'dr_http_requests_in_flight' in t and 'dr_predictions_total' in t

def test_unknown_route_404_and_counted(client):
    assert client.get('/nope').status_code == 404
    assert 'route="other",status="404"' in client.get('/metrics').text

def test_openapi_response_models(client):
    spec = client.get('/openapi.json').json()
    assert {'Prediction', 'BatchResponse', 'ModelInfo', 'Health', 'Ready', 'Problem'} <= set(spec['components']['schemas'])
    ok = spec['paths']['/predict']['post']['responses']
    assert ok['200']['content']['application/json']['schema']['$ref'].endswith('/Prediction')
    assert {'413', '415', '422'} <= set(ok)
    docs = client.get('/docs')
    assert docs.status_code == 200 and '/docs-assets/swagger-ui-bundle.js' in docs.text and 'cdn' not in docs.text.lower()  # works offline
    assert client.get('/docs-assets/swagger-ui-bundle.js').status_code == 200

def test_settings_from_env(monkeypatch, model_run, photos):
    monkeypatch.setenv('DR_MAX_UPLOAD_MB', '0.5'); monkeypatch.setenv('DR_MAX_PIXELS', '1000000'); monkeypatch.setenv('DR_CONCURRENCY', '3')
    monkeypatch.setenv('DR_THREADS', '')  # empty: the default
    app = create_app(model_run/'model')
    s = app.state.settings
    assert (s.max_upload_mb, s.max_pixels, s.concurrency, s.threads, s.max_batch_files) == (0.5, 1_000_000, 3, 1, 16)
    with TestClient(app) as c:
        r = post(c, photos['retina.jpeg'])  # 1411 x 1411 = 2 MP > 1 MP
        assert r.status_code == 413 and 'megapixels' in r.json()['detail']
        assert post(c, photos['small.jpeg']).status_code == 200
    assert create_app(model_run/'model', max_upload_mb=2).state.settings.max_upload_mb == 2
    monkeypatch.setenv('DR_CONCURRENCY', '0')
    with pytest.raises(ValueError, match='concurrency'): create_app(model_run/'model')

def test_bad_model_folder_fails_at_start(tmp_path):
    with pytest.raises(FileNotFoundError, match='model.json'): create_app(tmp_path)
    with pytest.raises(SystemExit, match='no model.json'): main(model=str(tmp_path))

def test_odd_but_valid_images(client, retina):
    "Grey, RGBA, 16-bit, CMYK and tiny images: an answer or a clear 4xx, never a 5xx."
    r = retina.resize((300, 300))
    variants = {'L': r.convert('L'), 'RGBA': r.convert('RGBA'), 'CMYK': r.convert('CMYK'), 'I;16': r.convert('I;16'),
                'tiny': r.resize((3, 2)), 'one pixel': Image.new('RGB', (1, 1)), 'black': Image.new('RGB', (200, 200))}
    for name, img in variants.items():
        b = io.BytesIO(); img.save(b, 'TIFF' if name in ('CMYK', 'I;16') else 'PNG')
        resp = post(client, b.getvalue(), name)
        assert resp.status_code in (200, 413, 415, 422), (name, resp.status_code, resp.text)
    assert client.get('/health').status_code == 200
