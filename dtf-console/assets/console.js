// dtf console: keeps the server-rendered pages live and sends actions to the JSON API.
// Vendored, no dependencies, no build step. The token lives in sessionStorage and is sent
// only in the Authorization header (never in a URL or a cookie).
(function () {
  'use strict';
  var KEY = 'dtf-console-token';
  var $ = function (sel) { return document.querySelector(sel); };

  // A token passed as `#token=...` (the fragment never reaches the server) is kept, then
  // removed from the address bar.
  if (location.hash.indexOf('#token=') === 0) {
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
    history.replaceState(null, '', location.pathname + location.search);
  }
  function token() { return sessionStorage.getItem(KEY) || ''; }
  function headers(json) {
    var h = {};
    if (json) h['Content-Type'] = 'application/json';
    if (token()) h['Authorization'] = 'Bearer ' + token();
    return h;
  }
  function api(method, path, body) {
    var opts = { method: method, headers: headers(body !== undefined) };
    if (body !== undefined) opts.body = body;
    return fetch(path, opts).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { j = { error: t }; }
        return { ok: r.ok, status: r.status, json: j };
      });
    });
  }
  function say(text, isError) {
    var m = $('#msg');
    if (!m) return;
    m.textContent = text;
    m.className = isError ? 'error' : '';
  }
  var enc = encodeURIComponent;

  var form = $('#token-form');
  if (form) {
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      sessionStorage.setItem(KEY, $('#token').value.trim());
      $('#token').value = '';
      say('Token set for this tab.');
      refreshAll();
    });
  }

  // ---- the live stream: server-sent events read with fetch, so the token can go in a header
  var handlers = [];
  function onStream(fn) { handlers.push(fn); }
  function startStream(query) {
    var ctl = new AbortController();
    var stopped = false;
    function connect(delay) {
      if (stopped) return;
      fetch('/api/events' + (query || ''), { headers: headers(false), signal: ctl.signal }).then(function (r) {
        if (!r.ok || !r.body) throw new Error('stream: HTTP ' + r.status);
        $('#live').textContent = 'live';
        $('#live').className = 'live on';
        var reader = r.body.getReader();
        var dec = new TextDecoder();
        var buf = '';
        function pump() {
          return reader.read().then(function (res) {
            if (res.done) throw new Error('stream ended');
            buf += dec.decode(res.value, { stream: true });
            var i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              var block = buf.slice(0, i);
              buf = buf.slice(i + 2);
              var type = 'message', data = [];
              block.split('\n').forEach(function (line) {
                if (line.indexOf('event:') === 0) type = line.slice(6).trim();
                else if (line.indexOf('data:') === 0) data.push(line.slice(5).replace(/^ /, ''));
              });
              if (!data.length) continue;
              var payload;
              try { payload = JSON.parse(data.join('\n')); } catch (e) { continue; }
              handlers.forEach(function (h) { h(type, payload); });
            }
            return pump();
          });
        }
        return pump();
      }).catch(function () {
        if (stopped) return;
        $('#live').textContent = 'offline';
        $('#live').className = 'live';
        setTimeout(function () { connect(Math.min((delay || 250) * 2, 5000)); }, delay || 250);
      });
    }
    connect(0);
    return function () { stopped = true; ctl.abort(); };
  }

  // ---- plugins table (plugins page and one plugin's page)
  var COLS = ['name', 'kind', 'version', 'source', 'state', 'hooks', 'queue_depth', 'delivered', 'dead_letters', 'restarts', 'last_error'];
  function hooksText(hooks) { return hooks.length > 4 ? hooks.length + ' hooks' : hooks.join(', '); }
  function buildRow(p) {
    var tr = document.createElement('tr');
    tr.setAttribute('data-name', p.name);
    COLS.forEach(function (c) {
      var td = document.createElement('td');
      td.setAttribute('data-f', c);
      if (c === 'name') {
        var a = document.createElement('a');
        a.href = '/plugins/' + enc(p.name);
        a.textContent = p.name;
        td.appendChild(a);
      }
      if (['queue_depth', 'delivered', 'dead_letters', 'restarts'].indexOf(c) >= 0) td.className = 'num';
      if (c === 'last_error') td.className = 'err';
      tr.appendChild(td);
    });
    var act = document.createElement('td');
    act.className = 'actions';
    ['enable', 'disable', 'restart', 'remove'].forEach(function (a) {
      var b = document.createElement('button');
      b.type = 'button';
      b.setAttribute('data-act', a);
      b.setAttribute('data-name', p.name);
      b.textContent = a;
      act.appendChild(b);
    });
    tr.appendChild(act);
    return tr;
  }
  function fillRow(tr, p) {
    COLS.forEach(function (c) {
      if (c === 'name') return;
      var td = tr.querySelector('[data-f="' + c + '"]');
      if (!td) return;
      var v = c === 'hooks' ? hooksText(p.hooks) : (p[c] === null || p[c] === undefined ? '' : String(p[c]));
      if (td.textContent !== v) td.textContent = v;
      if (c === 'state') td.className = 'state state-' + p.state;
    });
  }
  function renderRows(tbody, rows) {
    var seen = {};
    rows.forEach(function (p, i) {
      seen[p.name] = true;
      var tr = tbody.querySelector('tr[data-name="' + CSS.escape(p.name) + '"]');
      if (!tr) tr = buildRow(p);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
      fillRow(tr, p);
    });
    Array.prototype.slice.call(tbody.children).forEach(function (tr) {
      if (!seen[tr.getAttribute('data-name')]) tbody.removeChild(tr);
    });
  }

  var table = $('#plugins');
  var single = $('#plugin');
  var refreshTimer = null, lastRefresh = 0;
  function refreshPlugins() {
    if (table) {
      var q = '?offset=' + table.dataset.offset + '&limit=' + table.dataset.limit + '&q=' + enc(table.dataset.q || '');
      return api('GET', '/api/plugins' + q).then(function (r) {
        if (!r.ok) { say((r.json && r.json.error) || ('HTTP ' + r.status), true); return; }
        renderRows(table.tBodies[0], r.json);
        window.__dtfRefreshedAt = performance.now();
      });
    }
    if (single) {
      return api('GET', '/api/plugins/' + enc(single.dataset.name)).then(function (r) {
        if (r.ok) renderRows(single.tBodies[0], [r.json]);
        else if (r.status === 404) renderRows(single.tBodies[0], []);
        window.__dtfRefreshedAt = performance.now();
      });
    }
  }
  // Refreshes soon after a change (coalescing bursts), and at most once a second for counters.
  var refreshSoon = false;
  function scheduleRefresh(soon) {
    if (refreshTimer && (refreshSoon || !soon)) return;
    // A change replaces a pending counter refresh (which may be up to a second away).
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshSoon = soon;
    var wait = soon ? 30 : Math.max(0, 1000 - (performance.now() - lastRefresh));
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      lastRefresh = performance.now();
      refreshPlugins();
    }, wait);
  }
  if (table || single) {
    onStream(function (type, data) {
      if (type === 'plugin' || (type === 'bus' && /^plugin_/.test(data.kind && data.kind.type))) scheduleRefresh(true);
      else if (type === 'run') scheduleRefresh(false);
    });
  }

  document.addEventListener('click', function (e) {
    var b = e.target.closest && e.target.closest('button[data-act]');
    if (!b) return;
    var name = b.getAttribute('data-name'), act = b.getAttribute('data-act');
    if (act === 'remove' && !window.confirm('Remove plugin ' + name + ' from this run?')) return;
    b.disabled = true;
    api('POST', '/api/plugins/' + enc(name) + '/' + act).then(function (r) {
      b.disabled = false;
      if (r.ok) say(act + ' ' + name + ': ' + (r.json.state || 'done'));
      else say(act + ' ' + name + ' failed: ' + ((r.json && r.json.error) || ('HTTP ' + r.status)), true);
      scheduleRefresh(true);
    }, function (err) { b.disabled = false; say(String(err), true); });
  });

  // ---- settings editor
  var cfg = $('#config-form');
  function loadConfig() {
    if (!cfg) return;
    api('GET', '/api/plugins/' + enc(cfg.dataset.name) + '/config').then(function (r) {
      if (r.ok) $('#config').value = JSON.stringify(r.json.config, null, 2);
    });
  }
  if (cfg) {
    cfg.addEventListener('submit', function (e) {
      e.preventDefault();
      var out = $('#config-error');
      api('PUT', '/api/plugins/' + enc(cfg.dataset.name) + '/config', $('#config').value).then(function (r) {
        if (r.ok) {
          out.hidden = true;
          out.textContent = '';
          $('#config').value = JSON.stringify(r.json.config, null, 2);
          say('Settings applied.');
        } else {
          out.hidden = false;
          out.textContent = 'HTTP ' + r.status + ' ' + ((r.json && r.json.code) || '') + ': ' + ((r.json && r.json.error) || '');
          say('The settings were not applied; the old ones stay.', true);
        }
      });
    });
  }

  // ---- run page
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '–';
    var s = Math.round(ms / 1000);
    return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  }
  function cells(tbody, rows, fields) {
    tbody.textContent = '';
    rows.forEach(function (row) {
      var tr = document.createElement('tr');
      fields.forEach(function (f) {
        var td = document.createElement('td');
        td.textContent = row[f] === undefined || row[f] === null ? '' : String(row[f]);
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
  }
  function renderRun(s) {
    if (!$('#progress')) return;
    $('#run-id').textContent = s.run_id || '';
    $('#progress').max = Math.max(1, s.tasks_total);
    $('#progress').value = s.tasks_done;
    $('#progress-text').textContent = s.tasks_done + ' / ' + s.tasks_total + ' tasks done';
    $('#elapsed').textContent = fmtMs(s.elapsed_ms);
    $('#eta').textContent = s.finished ? 'finished' : fmtMs(s.eta_ms);
    Object.keys(s.tasks_by_state).forEach(function (k) {
      var td = document.querySelector('[data-count="' + k + '"]');
      if (td) td.textContent = s.tasks_by_state[k];
    });
    $('#events-total').textContent = s.events_total;
    $('#console-dropped').textContent = s.console_dropped;
    cells($('#workers').tBodies[0], s.workers, ['worker', 'state', 'running', 'passed', 'failed']);
    cells($('#failures').tBodies[0], s.failures, ['task', 'kind', 'message', 'tail']);
    window.__dtfRun = s;
  }
  var streamList = $('#stream');
  var pending = [], received = 0;
  window.__dtfLatencies = [];
  function flushStream() {
    var batch = pending.splice(0, pending.length).slice(-100);
    batch.forEach(function (ev) {
      var li = document.createElement('li');
      li.textContent = '#' + ev.meta.seq + ' ' + ev.kind.type + ' ' + JSON.stringify(ev.kind.data || {}).slice(0, 160);
      streamList.insertBefore(li, streamList.firstChild);
    });
    while (streamList.children.length > 200) streamList.removeChild(streamList.lastChild);
    $('#stream-count').textContent = received;
  }
  var stop = null;
  function streamQuery() {
    var h = $('#hook') && $('#hook').value;
    return h ? '?hook=' + enc(h) : '';
  }
  if (streamList) {
    onStream(function (type, data) {
      if (type === 'run') renderRun(data);
      if (type !== 'bus') return;
      received++;
      var t = data.meta && data.meta.time;
      if (t) {
        var lat = Date.now() - (t.secs_since_epoch * 1000 + t.nanos_since_epoch / 1e6);
        if (window.__dtfLatencies.length < 200000) window.__dtfLatencies.push(lat);
      }
      if (pending.push(data) === 1) requestAnimationFrame(flushStream);
    });
    $('#hook').addEventListener('change', function () {
      if (stop) stop();
      $('#live').textContent = 'connecting';
      $('#live').className = 'live';
      streamList.textContent = '';
      received = 0;
      stop = startStream(streamQuery());
    });
  }

  // ---- registry page: installed plugins and what the indexes offer, from /api/registry
  var installed = $('#installed');
  function refreshRegistry() {
    if (!installed) return;
    api('GET', '/api/registry').then(function (r) {
      if (!r.ok) { say((r.json && r.json.error) || ('HTTP ' + r.status), true); return; }
      var g = r.json;
      var known = { 'built-in': 'built-in', 'directory': 'plugin directory', 'index': 'installed from an index' };
      // Running plugins whose source the coordinator did not name are summed up below the
      // table (there may be a thousand); the plugins page lists them.
      var listed = g.installed.filter(function (p) { return p.source; });
      var unknown = g.installed.filter(function (p) { return !p.source; });
      var more = $('#unknown-source');
      more.hidden = !unknown.length;
      $('#unknown-count').textContent = unknown.length;
      $('#unknown-names').textContent = unknown.slice(0, 200).map(function (p) { return p.name; }).join(', ') +
        (unknown.length > 200 ? ', …' : '');
      cells(installed.tBodies[0], listed.map(function (p) {
        return {
          name: p.name,
          version: p.version + (p.running_version && p.running_version !== p.version ? ' (running ' + p.running_version + ')' : ''),
          source: known[p.source] + ' · ' + p.locality,
          from: (p.location || '') + (p.signed_by ? ' (signed by ' + p.signed_by + ')' : ''),
          state: p.state || 'not running',
          description: p.description
        };
      }), ['name', 'version', 'source', 'from', 'state', 'description']);
      Array.prototype.forEach.call(installed.tBodies[0].rows, function (tr, i) {
        tr.setAttribute('data-name', listed[i].name);
        tr.cells[4].className = 'state state-' + (listed[i].state || 'none');
      });
      $('#installed-count').textContent = '(' + listed.length + ')';
      var avail = $('#available');
      var note = $('#indexes');
      if (!g.indexes.length) {
        note.textContent = 'No plugin index is configured ([registry] indexes in dtf.toml).';
        avail.hidden = true;
      } else if (g.index_error) {
        note.textContent = 'Indexes: ' + g.indexes.join(', ') + '. They could not be read: ' + g.index_error;
        note.className = 'error';
        avail.hidden = true;
      } else {
        note.textContent = 'Indexes: ' + g.indexes.join(', ') + ' · ' + g.available.length + ' plugins';
        cells(avail.tBodies[0], g.available.map(function (p) {
          return {
            name: p.name, version: p.version,
            installable: p.installable || 'not by this build',
            installed: p.installed || '',
            index: p.index, description: p.description
          };
        }), ['name', 'version', 'installable', 'installed', 'index', 'description']);
        Array.prototype.forEach.call(avail.tBodies[0].rows, function (tr, i) {
          tr.setAttribute('data-name', g.available[i].name);
        });
        avail.hidden = false;
      }
      window.__dtfRegistry = g;
    });
  }
  if (installed) {
    // Plugin lifecycle events change the "in this run" column.
    onStream(function (type, data) {
      if (type === 'plugin' || (type === 'bus' && /^plugin_/.test(data.kind && data.kind.type))) {
        if (!refreshTimer) refreshTimer = setTimeout(function () { refreshTimer = null; refreshRegistry(); }, 30);
      }
    });
  }

  // Times are sent as milliseconds since the epoch; show them in the reader's time zone.
  Array.prototype.forEach.call(document.querySelectorAll('td.time[data-ms]'), function (td) {
    td.textContent = new Date(Number(td.dataset.ms)).toLocaleString();
  });

  function refreshAll() {
    refreshPlugins();
    refreshRegistry();
    loadConfig();
    if (streamList) api('GET', '/api/run').then(function (r) { if (r.ok) renderRun(r.json); });
  }

  if (table || single || installed) stop = startStream('?hook=plugin_started,plugin_failed,plugin_restarted,plugin_disabled');
  else if (streamList) stop = startStream(streamQuery());
  if (document.body.dataset.readsOpen !== 'true') refreshAll();
  else if (streamList) refreshAll();
  else if (installed) refreshRegistry();
  window.__dtfConsoleReady = true;
})();
