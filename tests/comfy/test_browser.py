"""The example workflows in a real browser, as a user meets them.

Starts a real ComfyUI server on 127.0.0.1 (this Python, --cpu) with the pack installed in a temporary
custom_nodes folder and the frontend from PyPI, opens it in headless Chromium driven by Playwright,
and for every example workflow: loads it from the template route ComfyUI serves for the pack, fails
on any dialog or error toast, on a node type the frontend does not know, or a page error; checks the
template browser lists them with their thumbnails (<name>.jpg beside each workflow); hovers a
setting of each of the pack's nodes and requires its tooltip; saves a screenshot of every graph and
of the template browser to $INFUSION_SCREENSHOTS (default benchmarks/out/browser).

Skipped when a part is missing (failed under CI=true): Chromium ($CHROMIUM, or Debian's `chromium`), Node.js with
playwright-core (`npm install playwright-core` in any folder; point NODE_PATH at its node_modules),
or the frontend package in this Python (`pip install comfyui-frontend-package`, the version in
ComfyUI's requirements.txt).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from infusion_dev import comfy_harness as h

from infusion_dev import examples

PACK_DIR_NAME = h.Server.PACK_DIR_NAME
SCREENSHOTS = os.environ.get("INFUSION_SCREENSHOTS") or os.path.join(h.PACK_ROOT, "benchmarks", "out", "browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]

SCRIPT = r"""
const { chromium } = require('playwright-core');
const fs = require('fs');
const [chromiumPath, url, pack, outDir, names, flags] = process.argv.slice(2).map((a, i) => i >= 4 ? JSON.parse(a) : a);
const ready = () => window.app && window.app.graph && window.app.vueAppReady;
// Dialogs: PrimeVue's (frontend 1.27) and the newer frontends' own (1.49: a div with role="dialog").
const DIALOGS = '[role="dialog"], .p-dialog';
const visibleTexts = (sel) => Array.from(document.querySelectorAll(sel))
  .filter(e => e.checkVisibility()).map(e => e.innerText.trim().slice(0, 2000));  // offsetParent is null when fixed
// Waits on conditions, not fixed pauses; one that never holds is reported by what is read after it. Only a hang
// waits out HANG (the page and its template browser are ready in under 30 s on a busy 2-core machine); a tooltip
// or dialog shows or hides in under 2 s there, so after QUICK it never will.
const HANG = 600000, QUICK = 60000;
const timedOut = e => { if (e.name !== 'TimeoutError') throw e; };
const until = (page, fn, arg, timeout = HANG) =>
  page.waitForFunction(fn, arg, { timeout, polling: 50 }).catch(timedOut);
const anyShown = (sel) => Array.from(document.querySelectorAll(sel)).some(e => e.checkVisibility());
const noneShown = (sel) => !Array.from(document.querySelectorAll(sel)).some(e => e.checkVisibility());
const drawn = (page) => page.evaluate(() => new Promise(done =>  // the canvas has drawn its next frame
  requestAnimationFrame(() => requestAnimationFrame(done))));
const TOOLTIP = '.node-tooltip';
// A dialog or toast a workflow raises may come after loading it returns: each graph is up this long before they
// are read (the hovers and screenshots fill most of it).
const SETTLE_MS = 2000;

(async () => {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: flags });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  let errors = [];
  page.on('pageerror', e => errors.push(e.message));
  const result = { workflows: {} };
  await page.goto(url, { waitUntil: 'networkidle' });
  await page.waitForFunction(ready, null, { timeout: HANG });
  // Screenshots of the graph alone: no minimap, canvas info or zoom menu drawn over it.
  await page.evaluate(async () => {
    for (const id of ['Comfy.Minimap.Visible', 'Comfy.Graph.CanvasInfo', 'Comfy.Graph.CanvasMenu'])
      await window.app.extensionManager.setting.set(id, false);
  });

  // The template browser opens first: show the pack's category, as a user finds the examples.
  const category = page.getByText(pack, { exact: true }).first();
  await category.waitFor({ timeout: HANG }).catch(timedOut);
  if (await category.count()) {
    await category.click();
    await page.waitForTimeout(1500);  // the list re-renders for the category: nothing to wait on tells when it is done
  }
  result.templateDialog = await page.evaluate(visibleTexts, DIALOGS);
  // Each thumbnail seen in view: the dialog loads them as they come into sight (and unloads the others), and
  // drops the image of one that fails to load.
  const thumbnails = DIALOGS.split(', ').map(s => s + ' img').join(', ');
  result.shownThumbnails = await page.evaluate(async (sel) => {
    const shown = [];
    for (let k = 0; k < document.querySelectorAll(sel).length; k++) {
      const image = document.querySelectorAll(sel)[k];
      image.parentElement.scrollIntoView({ block: 'center' });
      for (let waited = 0; !(image.src && image.complete) && waited < 600000; waited += 50)  // a hang only, as above
        await new Promise(done => setTimeout(done, 50));
      if (image.naturalWidth > 0) shown.push(image.alt);
    }
    return shown;
  }, thumbnails);
  await page.screenshot({ path: `${outDir}/template_browser.png` });
  await page.keyboard.press('Escape');
  await until(page, noneShown, DIALOGS, QUICK);

  for (const name of names) {
    errors = [];
    const data = await (await page.request.get(`${url}api/workflow_templates/${pack}/${name}.json`)).json();
    await page.evaluate(async ([d, n]) => { await window.app.loadGraphData(d, true, true, n); }, [data, name]);
    const loadedAt = Date.now();
    await drawn(page);
    const info = await page.evaluate(() => {
      const app = window.app, LG = window.LiteGraph;
      const nodes = app.graph._nodes;
      let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
      for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
      }
      for (const g of app.graph._groups) {
        const [gx, gy, gw, gh] = g._bounding;
        x0 = Math.min(x0, gx); y0 = Math.min(y0, gy); x1 = Math.max(x1, gx + gw); y1 = Math.max(y1, gy + gh);
      }
      return {
        unknownTypes: nodes.filter(n => !LG.registered_node_types[n.type]).map(n => n.type),
        badWidgets: nodes.flatMap(n => (n.widgets || []).filter(w => w.value === undefined || Number.isNaN(w.value))
                                        .map(w => `${n.type}.${w.name}`)),
        packNodes: nodes.filter(n => (n.constructor.nodeData?.category || '').startsWith('Infusion'))
                        .map(n => ({ id: n.id, type: n.type, widget: (n.widgets || []).find(w => w.type !== 'button')?.name })),
        bounds: [x0, y0, x1, y1],
      };
    });
    // Hover the first setting of each pack node: its tooltip must show.
    info.tooltips = {};
    for (const node of info.packNodes.filter(n => n.widget)) {
      const at = await page.evaluate(([id, widgetName]) => {
        const c = window.app.canvas, n = window.app.graph.getNodeById(id);
        const w = n.widgets.find(x => x.name === widgetName);
        c.ds.scale = 1; c.ds.offset = [200 - n.pos[0], 200 - n.pos[1]]; c.setDirty(true, true);
        const r = c.canvas.getBoundingClientRect();
        return [r.left + 200 + n.size[0] / 3, r.top + 200 + (w.last_y ?? w.y ?? 0) + 10];
      }, [node.id, node.widget]);
      await drawn(page);
      await page.mouse.move(at[0] - 30, at[1] - 30);
      await page.mouse.move(at[0], at[1], { steps: 5 });
      await until(page, anyShown, TOOLTIP, QUICK);  // after the frontend's hover delay
      info.tooltips[`${node.type}.${node.widget}`] = (await page.evaluate(visibleTexts, TOOLTIP)).join(' ');
      await page.screenshot({ path: `${outDir}/${name}_tooltip_${node.type}.png` });
      await page.mouse.move(1599, 999);  // off the graph and the side bar
      await until(page, noneShown, TOOLTIP, QUICK);  // so that the next hover reads its own tooltip
    }

    // The whole graph at 80% (text stays rendered), placed clear of the side and top bars that newer
    // frontends draw over the canvas, and cropped to the graph.
    const [x0, y0, x1, y1] = info.bounds, scale = 0.8, left = 90, top = 110, pad = 20;
    const width = Math.ceil((x1 - x0) * scale), height = Math.ceil((y1 - y0) * scale);
    await page.setViewportSize({ width: width + left + 2 * pad, height: height + top + 2 * pad });
    await page.mouse.move(width + left + 2 * pad - 1, height + top + 2 * pad - 1);
    const r = await page.evaluate(([x0, y0, s, left, top]) => {
      const c = window.app.canvas; c.ds.scale = s; c.ds.offset = [left / s - x0, top / s - y0]; c.setDirty(true, true);
      const b = c.canvas.getBoundingClientRect();
      return [b.left, b.top];
    }, [x0, y0, scale, left, top]);
    await drawn(page);
    await page.screenshot({ path: `${outDir}/${name}.png`,
                            clip: { x: r[0] + left - pad, y: r[1] + top - pad, width: width + 2 * pad, height: height + 2 * pad } });
    await page.setViewportSize({ width: 1600, height: 1000 });
    await page.waitForTimeout(Math.max(0, SETTLE_MS - (Date.now() - loadedAt)));
    info.dialogs = await page.evaluate(visibleTexts, DIALOGS);
    info.toasts = await page.evaluate(visibleTexts, '.p-toast-message');
    info.pageErrors = errors;
    result.workflows[name] = info;
  }
  await browser.close();
  fs.writeFileSync(`${outDir}/result.json`, JSON.stringify(result, null, 2));
})().catch(e => { console.error(e); process.exit(1); });
"""


def _node_path() -> str | None:
    """NODE_PATH under which `require('playwright-core')` resolves, or None."""
    node = shutil.which("node")
    if node is None:
        return None
    paths = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    npm = shutil.which("npm")
    if npm:
        done = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=600)  # a hang only
        paths.append(done.stdout.strip())
    node_path = os.pathsep.join(paths)
    done = subprocess.run([node, "-e", "require.resolve('playwright-core')"], capture_output=True, timeout=600,
                          env={**os.environ, "NODE_PATH": node_path})
    return node_path if done.returncode == 0 else None


def _missing_parts() -> tuple[str | None, str | None, str]:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    node_path = _node_path()
    missing = []
    if not chromium:
        missing.append("Chromium (apt-get install chromium, or set CHROMIUM)")
    if node_path is None:
        missing.append("Node.js with playwright-core (npm install playwright-core; NODE_PATH=<folder>/node_modules)")
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        missing.append(f"the frontend ({sys.executable} -m pip install comfyui-frontend-package)")
    return chromium, node_path, "; ".join(missing)


@pytest.fixture(scope="module")
def server(comfy_path, tmp_path_factory):
    """A real ComfyUI server with only this pack, in a temporary base directory, and the model
    files the examples name (empty: the UI only lists them)."""
    chromium, node_path, missing = _missing_parts()
    if missing:
        # CI installs them (.ci/run): there a missing part is a failure, never a silent skip.
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"browser check needs {missing}")
    base = tmp_path_factory.mktemp("comfyui_browser")
    for name in examples.example_names():
        for kind, file_name in h.model_files(examples.load(name)):
            (base / "models" / kind).mkdir(parents=True, exist_ok=True)
            (base / "models" / kind / file_name).touch()
        for folder in h.input_folders(examples.load(name)):
            (base / "input" / folder).mkdir(parents=True, exist_ok=True)
    with h.Server(comfy_path, str(base)) as running:
        yield {"url": running.url, "chromium": chromium, "node_path": node_path, "log": running.log_path}


def test_template_route_lists_the_examples(server):
    with urllib.request.urlopen(server["url"] + "workflow_templates") as response:
        templates = json.load(response)
    assert sorted(templates.get(PACK_DIR_NAME, [])) == examples.example_names()
    with open(server["log"]) as f:
        timings = [line for line in f if PACK_DIR_NAME in line and " seconds" in line]  # the import-times table
    assert len(timings) == 1 and "IMPORT FAILED" not in timings[0], timings


def test_every_example_loads_cleanly_in_the_browser(server, tmp_path):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    script = tmp_path / "browser_check.js"
    script.write_text(SCRIPT)
    # Every example this ComfyUI can run; runnable() raises for one that lacks other nodes than the newer
    # ComfyUI nodes it declares (train_from_dataset's dataset nodes, which 0.3.64 lacks).
    with urllib.request.urlopen(server["url"] + "object_info") as response:
        names = examples.runnable(json.load(response))
    assert set(examples.example_names()) - set(names) <= set(examples.NEWER_COMFYUI_NODES)
    done = subprocess.run(["node", str(script), server["chromium"], server["url"], PACK_DIR_NAME, SCREENSHOTS,
                           json.dumps(names), json.dumps(CHROMIUM_FLAGS)],
                          env={**os.environ, "NODE_PATH": server["node_path"]}, capture_output=True, text=True,
                          timeout=3600)  # a hang only: 1-2 minutes on a busy machine
    assert done.returncode == 0, done.stdout + done.stderr
    with open(os.path.join(SCREENSHOTS, "result.json")) as f:
        result = json.load(f)
    # The pack's category in the template browser shows every example.
    shown = " ".join(result["templateDialog"])
    assert all(name in shown for name in names), result["templateDialog"]
    assert set(examples.example_names()) <= set(result["shownThumbnails"]), result["shownThumbnails"]
    for name in names:
        info = result["workflows"][name]
        problems = {key: info[key] for key in ("unknownTypes", "badWidgets", "dialogs", "toasts", "pageErrors")
                    if info[key]}
        assert problems == {}, f"{name}: {problems}"
        assert info["packNodes"], name
        empty = [key for key, text in info["tooltips"].items() if len(text) < 10]
        assert empty == [], f"{name}: no tooltip shown for {empty}"
        assert os.path.getsize(os.path.join(SCREENSHOTS, f"{name}.png")) > 10_000
    print(f"\nscreenshots: {SCREENSHOTS}")
