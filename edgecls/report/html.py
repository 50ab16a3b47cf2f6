"""One offline, self-contained HTML page: the table (sortable by clicking a header), the notes,
and the figures embedded as base64 PNG data URIs. No external scripts, fonts or styles; a
Content-Security-Policy forbids fetching anything, so the page behaves the same on a laptop
without network as on a CI box.

The inline script marks the page when it has run: `<html data-edgecls-ready="1">`, and errors
caught by window.onerror land in `data-edgecls-errors`. Opening the page with `#selftest` also
sorts the table by each numeric column and checks the order, recording `data-edgecls-selftest`
("ok" or what failed); tests read these back from a real headless browser.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone

from edgecls import __version__
from edgecls.report.load import KEY_FIELDS, Loaded, Row
from edgecls.report.table import HEADERS, cell_text, cell_value, display_columns

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.warn{color:#a15c00;white-space:normal;min-width:14em}
tr.flagged td:first-child{border-left:4px solid #e69500}
tr.baseline{font-weight:bold;background:#eef6ff}
ul.notes li{margin:.15em 0} .skipped{color:#b00}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #ddd} .left-out{color:#666}
"""

JS = """
(function(){
  var root = document.documentElement, errors = [];
  window.addEventListener('error', function(e){
    errors.push(String(e.message || e)); root.setAttribute('data-edgecls-errors', errors.join(' | '));
  });
  var table = document.getElementById('rows');
  var body = table.tBodies[0];
  function isNum(col){ return table.tHead.rows[0].cells[col].getAttribute('data-type') === 'num'; }
  function key(td, num){
    var v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    return num ? Number(v) : v;
  }
  function cmp(x, y, num){
    return num ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
  }
  function sortBy(col, dir){
    var num = isNum(col), rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a.cells[col], num), y = key(b.cells[col], num);
      if (x === y) return 0;
      if (x === null) return 1;          /* missing values last, whatever the direction */
      if (y === null) return -1;
      return cmp(x, y, num) * dir;
    });
    rows.forEach(function(r){ body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      th.setAttribute('aria-sort', i === col ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    });
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
    th.addEventListener('click', function(){
      sortBy(i, th.getAttribute('aria-sort') === 'ascending' ? -1 : 1);
    });
  });
  window.edgeclsSort = sortBy;
  if (location.hash === '#selftest') {
    var bad = [];
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      if (th.getAttribute('data-type') !== 'num') return;
      [1, -1].forEach(function(dir){   /* a first click sorts ascending, a second descending */
        th.click();
        var want = dir > 0 ? 'ascending' : 'descending';
        if (th.getAttribute('aria-sort') !== want) { bad.push(th.textContent + ' not ' + want); return; }
        var vals = Array.prototype.map.call(body.rows, function(r){ return key(r.cells[i], true); })
                        .filter(function(v){ return v !== null; });
        for (var k = 1; k < vals.length; k++)
          if ((vals[k] - vals[k-1]) * dir < 0) { bad.push(th.textContent + ' ' + want); break; }
      });
    });
    sortBy(0, 1);
    root.setAttribute('data-edgecls-selftest', bad.length ? 'failed: ' + bad.join(', ') : 'ok');
  }
  root.setAttribute('data-edgecls-ready', '1');
})();
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(row: Row, col: str) -> str:
    value = cell_value(row, col)
    cls = "warn" if col == "warnings" else ("" if col in KEY_FIELDS else "num")
    attrs = f' data-v="{_e("" if value is None else value)}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{_e(cell_text(row, col))}</td>"


def _numeric(col: str) -> bool:
    return col not in KEY_FIELDS  # metrics, ratios, and warnings (sorted by how many)


def page(loaded: Loaded, pngs: dict[str, bytes], baseline: Row | None = None, title: str = "edgecls report",
         left_out: dict[str, str] | None = None) -> str:
    """The page; left_out: figure name -> why it was not drawn, one line each under Figures."""
    cols = display_columns(baseline is not None, loaded.rows)
    head = "".join(f'<th data-type="{"num" if _numeric(c) else "text"}" aria-sort="none">{_e(HEADERS[c])}</th>'
                   for c in cols)
    body = []
    for r in loaded.rows:
        cls = [c for c, on in (("flagged", bool(r.warnings)), ("baseline", r is baseline)) if on]
        attr = f' class="{" ".join(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(_cell(r, c) for c in cols) + "</tr>")
    notes = [f'<li class="skipped">skipped: {_e(w)}</li>' for w in loaded.warnings]
    notes += [f"<li>{_e(n)}</li>" for n in loaded.notes]
    figures = [f'<figure id="fig-{_e(name)}"><img alt="{_e(name)} plot" '
               f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
               for name, data in pngs.items()]
    figures += [f'<p class="left-out" id="left-out-{_e(name)}">{_e(name)} figure left out: {_e(why)}</p>'
                for name, why in (left_out or {}).items()]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = f"; baseline <b>{_e(baseline.label)}</b> (ratios: latency row/baseline, fps row/baseline)" \
        if baseline else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        (f'<p class="meta">{len(loaded.rows)} rows from edgecls bench reports; made {stamp} by edgecls '
         f"{_e(__version__)}{base}. Click a column header to sort. Rows with warnings are marked: "
         "their numbers are suspect.</p>"),
        '<table id="rows"><thead><tr>' + head + "</tr></thead><tbody>", *body, "</tbody></table>",
        *(["<h2>Notes</h2>", '<ul class="notes">', *notes, "</ul>"] if notes else []),
        "<h2>Figures</h2>", *figures,
        f"<script>{JS}</script>", "</body>", "</html>", ""])
