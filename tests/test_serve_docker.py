"""The Docker image: built from the Dockerfile with a model folder at the default runs/demo/model, run, healthy, answering.
Needs a working `docker` (here: `eval "$(../shared/tools/container-engine up)"`, which .ci/run does); skipped cleanly otherwise."""
import json, shutil, subprocess, time, uuid
from pathlib import Path
import httpx
import pytest
from conftest import ROOT, SHARED

MAX_IMAGE_MB = 600
CONTEXT_FILES = ['Dockerfile', '.dockerignore', 'settings.ini', 'setup.py', 'pyproject.toml', 'MANIFEST.in', 'README.md', 'LICENSE']

def _docker_works() -> bool:
    if not shutil.which('docker'): return False
    try: return subprocess.run(['docker', 'info'], capture_output=True, timeout=60).returncode == 0
    except (subprocess.TimeoutExpired, OSError): return False

pytestmark = pytest.mark.skipif(not _docker_works(), reason='no working container engine (docker info failed)')

def docker(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(['docker', *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode: raise AssertionError(f"docker {' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r

def context(tmp:Path, run:Path|None):
    "A build context like a checkout after `make demo`: the repo's package files and runs/demo/model from `run` (None: none)."
    ctx = tmp/f'docker_ctx_{uuid.uuid4().hex[:6]}'; ctx.mkdir()
    for f in CONTEXT_FILES:
        if (ROOT/f).exists(): shutil.copy(ROOT/f, ctx/f)
    shutil.copytree(ROOT/'dr_detection', ctx/'dr_detection', ignore=shutil.ignore_patterns('__pycache__'))
    (ctx/'runs'/'demo'/'preprocessed').mkdir(parents=True)
    (ctx/'runs'/'demo'/'preprocessed'/'big.bin').write_bytes(b'0' * 2**20)  # must stay out of the context (.dockerignore)
    if run is not None:
        shutil.copytree(run/'model', ctx/'runs'/'demo'/'model')
        shutil.copy(run/'metrics.json', ctx/'runs'/'demo'/'metrics.json')
    return ctx

def real_photo(photos) -> tuple[str, bytes]:
    "A real EyePACS photo from ../shared/data when present (never copied anywhere), else the scikit-image retina."
    for p in sorted((SHARED/'eyepacs-1024'/'train').glob('*.jpeg'))[:1]: return p.name, p.read_bytes()
    return 'retina.jpeg', photos['retina.jpeg']

@pytest.fixture(scope='module')
def image(model_run, tmp_path_factory):
    tag = f'dr-detection-api:test-{uuid.uuid4().hex[:8]}'
    docker('build', '-t', tag, context(tmp_path_factory.mktemp('docker'), model_run), timeout=1200)
    yield tag
    docker('rmi', '-f', tag, check=False)

def test_image_contents(image):
    info = json.loads(docker('image', 'inspect', image).stdout)[0]
    size_mb = info['Size'] / 1e6
    print(f'\nimage size {size_mb:.0f} MB')
    assert size_mb <= MAX_IMAGE_MB
    cfg = info['Config']
    assert cfg['User'] not in ('', 'root', '0') and '8000/tcp' in cfg['ExposedPorts'] and cfg['Cmd'][0] == 'dr-serve'
    # (Podman's Docker API leaves Config.Healthcheck out of `docker image inspect`; the history shows it, and the run test checks it works)
    assert 'HEALTHCHECK' in docker('history', '--no-trunc', '--format', '{{.CreatedBy}}', image).stdout
    r = docker('run', '--rm', '--entrypoint', 'python', image, '-c',
               "import importlib.util as u, os; print([m for m in ('torch', 'fastai', 'torchvision', 'pandas', 'matplotlib') if u.find_spec(m)], os.getuid(), sorted(os.listdir('/app/run')), sorted(os.listdir('/app/run/model')))")
    assert r.stdout.strip() == "[] 10001 ['metrics.json', 'model'] ['model.json', 'model.onnx']", r.stdout

def test_container_healthy_and_answers(image, photos, bad_inputs):
    name = f'dr-api-test-{uuid.uuid4().hex[:8]}'
    docker('run', '-d', '--name', name, '-p', '127.0.0.1::8000', image)
    try:
        port = docker('port', name, '8000').stdout.strip().splitlines()[0].rsplit(':', 1)[1]
        url = f'http://127.0.0.1:{port}'
        status, t0 = '', time.time()
        while time.time() - t0 < 180:
            status = docker('inspect', '--format', '{{.State.Health.Status}}', name).stdout.strip()
            if status == 'healthy': break
            if docker('inspect', '--format', '{{.State.Running}}', name).stdout.strip() != 'true':
                raise AssertionError('container exited:\n' + docker('logs', name, check=False).stdout[-3000:])
            time.sleep(2)
        assert status == 'healthy', (status, docker('logs', name, check=False).stderr[-3000:])
        fname, data = real_photo(photos)
        r = httpx.post(url + '/predict?explain=true', files={'file': (fname, data, 'image/jpeg')}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()['label'] in ('DR', 'No DR') and r.json()['heatmap_png']
        bad, status_ = bad_inputs['truncated JPEG']
        assert httpx.post(url + '/predict', files={'file': ('bad.jpeg', bad)}, timeout=60).status_code == status_
        assert httpx.post(url + '/predict', files={'file': ('big.jpeg', bytes(21 * 2**20))}, timeout=60).status_code == 413
        assert 'screening aid' in httpx.get(url + '/').text.lower()
        assert httpx.get(url + '/model').json()['metrics'] is not None
    finally:
        docker('rm', '-f', name, check=False)

@pytest.mark.usefixtures('image')  # after the image's build, which fills the layer cache
def test_missing_model_fails_build_clearly(tmp_path):
    r = docker('build', '-t', f'dr-detection-api:nomodel-{uuid.uuid4().hex[:6]}', context(tmp_path, None), timeout=1200, check=False)
    assert r.returncode != 0
    assert "no model folder at 'runs/demo/model'" in r.stdout + r.stderr and 'make demo' in r.stdout + r.stderr
