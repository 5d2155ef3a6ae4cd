"The service as users meet it: a real uvicorn process on 127.0.0.1, real HTTP (httpx), a long mixed stream with a memory bound."
import random, time
from concurrent.futures import ThreadPoolExecutor
import httpx
import pytest
from conftest import BAD_INPUTS, rss_mb

MAX_MB = 1            # the server's upload limit in these tests
RSS_GROWTH_MB = 40    # allowed RSS growth of the server over the stream, after warm-up

@pytest.fixture(scope='module')
def server(start_server, model_run):
    return start_server(model_run/'model', '--max_upload_mb', MAX_MB, '--concurrency', 2)

def test_endpoints_over_http(server, photos, bad_inputs):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get('/health').json() == {'status': 'ok'}
        assert c.get('/ready').json()['ready'] is True
        assert 'screening aid' in c.get('/').text.lower()
        j = c.post('/predict?explain=true', files={'file': ('r.jpeg', photos['retina.jpeg'], 'image/jpeg')}).json()
        assert j['label'] in ('DR', 'No DR') and j['heatmap_png']
        b = c.post('/predict/batch', files=[('files', ('a.jpeg', photos['small.jpeg'])), ('files', ('b', b''))]).json()
        assert [i['status'] for i in b['results']] == [200, 400]
        assert c.get('/model').json()['metrics'] is not None
        assert 'dr_http_requests_total' in c.get('/metrics').text
        for name, (data, status) in bad_inputs.items():
            assert c.post('/predict', files={'file': ('x', data)}).status_code == status, name
        assert c.post('/predict', files={'upload': ('x.jpeg', photos['small.jpeg'])}).status_code == 422

def test_413_before_body_is_read(server):
    "A declared Content-Length over the limit is refused at once; a chunked body is cut off at the limit, not read to its end."
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post('/predict', files={'file': ('big.jpeg', b'\xff\xd8\xff' + bytes(5 * 2**20))})
        assert r.status_code == 413 and 'limit' in r.json()['detail']
    sent, total = [0], 400  # 400 x 64 kB = 25 MB
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post('/predict', content=chunked_upload(total, sent), headers={'content-type': 'multipart/form-data; boundary=zz'})
    assert r.status_code == 413
    assert sent[0] < total / 2, f'the client could send {sent[0]} of {total} chunks'
    assert httpx.get(server.url + '/health').status_code == 200

HEAD = b'--zz\r\nContent-Disposition: form-data; name="file"; filename="big.jpeg"\r\nContent-Type: image/jpeg\r\n\r\n'

def chunked_upload(n_chunks:int, counter=None):
    "A multipart body of `n_chunks` x 64 kB streamed without Content-Length (chunked transfer encoding)."
    yield HEAD
    for _ in range(n_chunks):
        if counter is not None: counter[0] += 1
        yield b'x' * 65536

def _request(c:httpx.Client, kind:str, p:dict, bad:dict):
    if kind == 'jpeg': return c.post('/predict', files={'file': ('a.jpeg', p['small.jpeg'])})
    if kind == 'png': return c.post('/predict', files={'file': ('a.png', p['small.png'])})
    if kind == 'explain': return c.post('/predict?explain=true', files={'file': ('a.jpeg', p['small.jpeg'])})
    if kind == 'dark': return c.post('/predict', files={'file': ('d.jpeg', p['dark.jpeg'])})
    if kind == 'batch': return c.post('/predict/batch', files=[('files', ('a.jpeg', p['small.jpeg'])), ('files', ('b', bad['non-image'][0]))])
    if kind == 'field': return c.post('/predict', files={'photo': ('a.jpeg', p['small.jpeg'])})
    if kind == 'big': return c.post('/predict', files={'file': ('big.jpeg', b'\xff\xd8' + bytes(int(1.3 * 2**20)))})
    if kind == 'big-chunked':
        return c.post('/predict', content=chunked_upload(24), headers={'content-type': 'multipart/form-data; boundary=zz'})
    if kind in ('health', 'model', 'metrics'): return c.get('/' + kind)
    return c.post('/predict', files={'file': ('x', bad[kind][0])})

KINDS = {'jpeg': 40, 'png': 8, 'explain': 5, 'dark': 5, 'batch': 4, 'field': 3, 'big': 3, 'big-chunked': 2, 'health': 2, 'model': 1,
         'metrics': 1, **{k: 5 for k in BAD_INPUTS}}

def test_mixed_stream_no_5xx_no_memory_growth(server, photos, bad_inputs):
    "2,000 requests, valid and bad, 8 at a time: no 5xx, every bad one a 4xx, and the server's RSS settles."
    rng = random.Random(0)
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=2000)
    statuses, t0 = [], time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=8)) as c, ThreadPoolExecutor(8) as ex:
        def run(ks): return list(ex.map(lambda k: (k, _request(c, k, photos, bad_inputs).status_code), ks))
        statuses += run(kinds[:300])
        rss_warm = rss_mb(server.proc.pid)
        statuses += run(kinds[300:])
    rss_end = rss_mb(server.proc.pid)
    dt = time.perf_counter() - t0
    by = {}
    for k, s in statuses: by.setdefault(k, set()).add(s)
    print(f'\n2000 requests in {dt:.0f}s ({2000/dt:.0f}/s); RSS after warm-up {rss_warm:.0f} MB, at the end {rss_end:.0f} MB '
          f'(+{rss_end - rss_warm:.1f} MB, bound {RSS_GROWTH_MB} MB); statuses {by}')
    assert not [s for _, s in statuses if s >= 500]
    assert all(s == {200} for k, s in by.items() if k in ('jpeg', 'png', 'explain', 'dark', 'batch', 'health', 'model', 'metrics'))
    assert all(s <= {400, 413, 415, 422} for k, s in by.items() if k not in ('jpeg', 'png', 'explain', 'dark', 'batch', 'health', 'model', 'metrics'))
    assert rss_end - rss_warm < RSS_GROWTH_MB
    assert server.proc.poll() is None and httpx.get(server.url + '/ready').status_code == 200
    m = httpx.get(server.url + '/metrics').text
    assert 'status="500"' not in m
