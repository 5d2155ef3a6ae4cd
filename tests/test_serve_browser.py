"A person's path: headless Chromium (playwright) opens the page of a real server, uploads a photo and reads the verdict. Skipped without Chromium."
import os, re
from pathlib import Path
import pytest

CHROMIUM = os.environ.get('DR_CHROMIUM', '/usr/bin/chromium')
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f'Chromium not found at {CHROMIUM} (apt-get install chromium)')

@pytest.fixture(scope='module')
def page_url(start_server, model_run):
    return start_server(model_run/'model').url

@pytest.fixture(scope='module')
def browser():
    sync_api = pytest.importorskip('playwright.sync_api')
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'])
        yield b
        b.close()

def test_upload_photo_shows_verdict(browser, page_url, photos, tmp_path):
    photo = tmp_path/'retina.jpeg'; photo.write_bytes(photos['retina.jpeg'])
    page = browser.new_page(viewport={'width': 1100, 'height': 1000})
    page.goto(page_url + '/')
    assert 'screening aid' in page.inner_text('body').lower()
    page.set_input_files('#file', str(photo))
    page.wait_for_selector('#result:not(.hidden)', timeout=30000)
    verdict = page.inner_text('#verdict')
    assert verdict in ('DR', 'No DR')
    assert re.fullmatch(r'\d+\.\d%', page.inner_text('#probability')) and re.fullmatch(r'\d+\.\d%', page.inner_text('#threshold'))
    assert page.inner_text('#quality') in ('gradable', 'NOT gradable: retake the photo')
    assert page.eval_on_selector('#heatmap', 'img => img.complete && img.naturalWidth') == 64
    page.screenshot(path=str(tmp_path/'page.png'), full_page=True)
    page.close()

def test_ungradable_and_bad_file(browser, page_url, photos, tmp_path):
    page = browser.new_page()
    page.goto(page_url + '/')
    dark = tmp_path/'dark.jpeg'; dark.write_bytes(photos['dark.jpeg'])
    page.set_input_files('#file', str(dark))
    page.wait_for_selector('#result:not(.hidden)', timeout=30000)
    assert page.inner_text('#quality').startswith('NOT gradable') and page.inner_text('#reasons').strip()
    bad = tmp_path/'notes.txt'; bad.write_text('not a photo')
    page.set_input_files('#file', str(bad))
    page.wait_for_selector('#error:not(.hidden)', timeout=30000)
    assert 'HTTP 415' in page.inner_text('#error') and page.is_hidden('#result')
    page.close()

def test_docs_page_renders_offline(browser, page_url):
    "The OpenAPI page is Swagger UI served by the app itself (no CDN): it renders the operations."
    page = browser.new_page()
    page.route('**/*', lambda route: route.continue_() if route.request.url.startswith(page_url) else route.abort())  # no internet
    page.goto(page_url + '/docs')
    page.wait_for_selector('text="Screen several photos"', timeout=30000)
    assert 'Screen one fundus photo' in page.inner_text('body')
    page.close()
