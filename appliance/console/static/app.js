'use strict';
// The snapscan console: each page reads the appliance's own /v1 API with
// the browser's session cookie (the same authorisation as a token) and
// draws itself with DOM nodes (text is never parsed as HTML). Actions send
// the session's CSRF token. Pages refresh themselves while visible.

const state = { csrf: null, timer: null, charts: {} };
// Tests and curious operators can reach the charts: window.snapscan.charts.
window.snapscan = state;

// ---------- helpers ----------

class APIError extends Error {
	constructor(status, msg) { super(msg); this.status = status; }
}

async function api(method, path, body) {
	const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
	if (method !== 'GET') {
		opts.headers['X-CSRF-Token'] = state.csrf;
		if (body !== undefined) {
			opts.headers['Content-Type'] = 'application/json';
			opts.body = JSON.stringify(body);
		}
	}
	const resp = await fetch(path, opts);
	if (resp.status === 401) {
		location.assign('/console/login?next=' + encodeURIComponent(location.pathname + location.search));
		throw new APIError(401, 'logged out');
	}
	let data = null;
	const text = await resp.text();
	if (text) {
		try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
	}
	if (!resp.ok) throw new APIError(resp.status, (data && data.error) || resp.statusText);
	return data;
}

// el builds an element: el('td', {class: 'num'}, 'text', child, ...).
function el(tag, attrs, ...kids) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs || {})) {
		if (v === undefined || v === null || v === false) continue;
		if (k === 'class') e.className = v;
		else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
		else if (k === 'dataset') Object.assign(e.dataset, v);
		else e.setAttribute(k, v === true ? '' : String(v));
	}
	for (const k of kids.flat()) {
		if (k === undefined || k === null || k === false) continue;
		e.append(k instanceof Node ? k : document.createTextNode(String(k)));
	}
	return e;
}

function table(headers, rows, empty) {
	const head = el('tr', {}, headers.map(h => el('th', { class: h.startsWith('#') ? 'num' : null }, h.replace(/^#/, ''))));
	const body = rows.length ? rows : [el('tr', {}, el('td', { colspan: headers.length, class: 'muted' }, empty || 'None.'))];
	return el('table', {}, el('thead', {}, head), el('tbody', {}, body));
}

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
function bytes(n) {
	if (n === undefined || n === null) return '';
	let i = 0; n = Number(n);
	while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
	return (i ? n.toFixed(n < 10 ? 2 : 1) : String(Math.round(n))) + ' ' + units[i];
}
function rate(n) { return bytes(n) + '/s'; }
function num(n) { return n === undefined || n === null ? '' : Number(n).toLocaleString('en-US'); }
function dur(s) {
	if (!isFinite(s) || s < 0) return '';
	s = Math.round(s);
	if (s < 60) return s + ' s';
	if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
	if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
	return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
}
function when(t) {
	if (!t) return '';
	const d = new Date(t);
	return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
function ago(t) {
	if (!t) return 'never';
	const s = (Date.now() - new Date(t).getTime()) / 1000;
	return s < 0 ? 'in ' + dur(-s) : dur(s) + ' ago';
}
function badge(text, cls) { return el('span', { class: 'badge ' + (cls || text) }, text); }
function link(href, text) { return el('a', { href }, text); }
function status(msg, isError) {
	const s = document.getElementById('status');
	s.textContent = msg;
	s.className = 'status' + (isError ? ' error' : '');
}

// refresh runs draw now and again every ms while the page is visible.
function refresh(draw, ms) {
	clearInterval(state.timer);
	const run = async () => {
		if (document.hidden) return;
		try {
			await draw();
			status('updated ' + new Date().toLocaleTimeString('en-GB'));
		} catch (e) {
			if (e.status !== 401) status(e.message, true);
		}
	};
	run();
	state.timer = setInterval(run, ms);
}

async function act(method, path, what) {
	try {
		await api(method, path);
		status(what);
		return true;
	} catch (e) {
		status(e.message, true);
		return false;
	}
}

function query(params) {
	const q = new URLSearchParams();
	for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
	const s = q.toString();
	return s ? '?' + s : '';
}

// ---------- charts ----------

// chart draws a rate against its budget: solid measured line, dashed
// budget line (absent when the budget is unlimited).
function chart(box, title, unitFmt, data, budgetLabel) {
	const width = Math.max(280, box.clientWidth || 560);
	// The legend shows the value under the cursor, or else the latest.
	const latest = (u, i) => {
		const d = u.data[i];
		for (let k = d.length - 1; k >= 0; k--) if (d[k] !== null && d[k] !== undefined) return d[k];
		return null;
	};
	const show = i => (u, v) => {
		if (v === null || v === undefined) v = latest(u, i);
		return v === null ? (i === 2 ? 'unlimited' : '') : unitFmt(v);
	};
	const opts = {
		title, width, height: 200,
		scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(hi * 1.1, 1)] } },
		axes: [{}, { values: (u, ticks) => ticks.map(unitFmt), size: 96 }],
		series: [
			{},
			{ label: 'measured', stroke: '#1f5fae', width: 1.5, fill: 'rgba(31,95,174,0.08)', points: { show: false }, value: show(1) },
			{ label: budgetLabel, stroke: '#c0392b', width: 2, dash: [8, 6], points: { show: false }, value: show(2) },
		],
		legend: { live: true },
	};
	const u = new uPlot(opts, data, box);
	new ResizeObserver(() => {
		if (box.clientWidth && Math.abs(box.clientWidth - u.width) > 4) u.setSize({ width: box.clientWidth, height: 200 });
	}).observe(box);
	return u;
}

function historyData(samples, field, budgetField) {
	const xs = [], ys = [], bs = [];
	for (const s of samples) {
		const secs = s.interval_ns / 1e9;
		if (!(secs > 0)) continue;
		xs.push(new Date(s.at).getTime() / 1000);
		ys.push(s[field] / secs);
		bs.push(s[budgetField] > 0 ? s[budgetField] : null);
	}
	return [xs, ys, bs];
}

// ---------- pages ----------

const ranges = { '1h': 3600, '6h': 6 * 3600, '24h': 86400, '7d': 7 * 86400 };

async function pageDatastores(main) {
	const range = new URLSearchParams(location.search).get('range') || '1h';
	const sel = el('select', { id: 'range', onchange: e => { location.search = '?range=' + e.target.value; } },
		Object.keys(ranges).map(r => el('option', { value: r, selected: r === range }, 'last ' + r)));
	const cards = el('div', { class: 'cards', id: 'datastores' });
	main.replaceChildren(el('h1', {}, 'Datastores'),
		el('p', { class: 'muted' }, 'Scan reads of each datastore (blue) against its budget (red, dashed): the last hour from the appliance\'s memory, longer from its database at a coarse resolution. ', sel),
		cards);
	const built = {};
	refresh(async () => {
		const since = new Date(Date.now() - ranges[range] * 1000).toISOString();
		const dsResp = await api('GET', '/v1/datastores');
		// Every card first, so that each chart is sized to its card.
		for (const d of dsResp.datastores) {
			if (!built[d.name]) {
				built[d.name] = buildDatastoreCard(d);
				cards.append(built[d.name].card);
			}
		}
		// Each card's history and its own part of the queue (the first
		// ten waiting: a rescan may queue every VM at once).
		const [hists, queues] = await Promise.all([
			Promise.all(dsResp.datastores.map(d =>
				api('GET', '/v1/datastores/' + encodeURIComponent(d.name) + '/history' + query({ since })))),
			Promise.all(dsResp.datastores.map(d => api('GET', '/v1/queue' + query({ datastore: d.name, limit: 10 })))),
		]);
		dsResp.datastores.forEach((d, i) => fillDatastoreCard(built[d.name], d, hists[i].samples, queues[i]));
	}, 5000);
}

function buildDatastoreCard(d) {
	const c = {};
	c.title = el('h3', {}, d.name);
	c.flags = el('span');
	c.button = el('button', { type: 'button', class: 'pause', dataset: { datastore: d.name } });
	c.button.addEventListener('click', async () => {
		const paused = c.button.dataset.paused === 'true';
		const verb = paused ? 'resume' : 'pause';
		c.button.disabled = true;
		if (await act('POST', '/v1/datastores/' + encodeURIComponent(d.name) + '/' + verb, d.name + ': ' + verb + 'd')) {
			c.button.dataset.paused = String(!paused);
			c.button.textContent = paused ? 'Pause' : 'Resume';
		}
		c.button.disabled = false;
	});
	c.bytesBox = el('div', { class: 'chart', dataset: { chart: 'bytes', datastore: d.name } });
	c.opsBox = el('div', { class: 'chart', dataset: { chart: 'ops', datastore: d.name } });
	c.jobs = el('div');
	c.card = el('section', { class: 'card', dataset: { datastore: d.name } },
		el('div', { class: 'head' }, c.title, c.flags, el('span', { class: 'spacer' }), c.button),
		el('div', { class: 'charts' }, c.bytesBox, c.opsBox), c.jobs);
	return c;
}

function fillDatastoreCard(c, d, samples, queue) {
	const b = d.budget;
	c.flags.replaceChildren(
		d.paused ? badge('paused') : badge('active', 'ok'), ' ',
		el('span', { class: 'muted' }, `${d.running} of ${b.max_scans} scans running, ${d.queued} waiting · now ${rate(d.delivered.bytes_per_sec)}, ${num(Math.round(d.delivered.ops_per_sec))} ops/s · budget ${b.bytes_per_sec ? rate(b.bytes_per_sec) : 'unlimited'}, ${b.ops_per_sec ? num(b.ops_per_sec) + ' ops/s' : 'unlimited ops'}`));
	c.button.dataset.paused = String(d.paused);
	c.button.textContent = d.paused ? 'Resume' : 'Pause';
	const bytesData = historyData(samples, 'bytes_read', 'budget_bytes_per_sec');
	const opsData = historyData(samples, 'read_ops', 'budget_ops_per_sec');
	if (!c.bytesChart) {
		c.bytesChart = chart(c.bytesBox, 'read bytes/s', rate, bytesData, 'budget (bytes_per_sec)');
		c.opsChart = chart(c.opsBox, 'read ops/s', v => num(Math.round(v)), opsData, 'budget (ops_per_sec)');
		state.charts[d.name] = { bytes: c.bytesChart, ops: c.opsChart };
	} else {
		c.bytesChart.setData(bytesData);
		c.opsChart.setData(opsData);
	}
	c.bytesBox.dataset.points = String(bytesData[0].length);
	const running = queue.running, waiting = queue.waiting;
	c.jobs.replaceChildren(
		el('h3', {}, 'Running'),
		table(['VM', 'scan', 'started', '#read'], running.map(j => el('tr', {},
			el('td', {}, j.vm), el('td', {}, link('/console/queue', '#' + j.id)), el('td', {}, ago(j.started_at)),
			el('td', { class: 'num' }, j.progress ? bytes(j.progress.bytes_read) : ''))), 'No scan reads this datastore now.'),
		el('h3', {}, 'Waiting'),
		table(['#position', 'VM', 'why'], waiting.map(w => el('tr', {},
			el('td', { class: 'num' }, w.position), el('td', {}, w.scan.vm), el('td', {}, reasonText(w)))), 'Nothing waits for this datastore.'),
		el('p', { class: 'muted' }, queue.waiting_total > waiting.length ? `and ${queue.waiting_total - waiting.length} more (Queue page)` : ''));
}

const reasonNames = {
	not_serving: 'the queue is not running (no signature set yet)', draining: 'the appliance is shutting down',
	backoff: 'retry after a failed attempt', not_before: 'scheduled for later', paused: 'datastore paused',
	vm_running: 'another scan of this VM runs', datastore_full: 'datastore full (its max_scans budget)',
	all_slots_busy: 'every scan slot busy (queue.max_scans)', next: 'next: starts when a slot frees',
};
function reasonText(w) {
	let s = reasonNames[w.reason] || w.reason;
	if (w.detail) s += ': ' + w.detail;
	if (w.until) s += ' (until ' + when(w.until) + ', ' + ago(w.until) + ')';
	return s;
}

async function pageQueue(main) {
	const run = el('div', { id: 'running' }), wait = el('div', { id: 'waiting' }), failed = el('div', { id: 'failed' });
	main.replaceChildren(el('h1', {}, 'Queue'), el('h2', {}, 'Running'), run, el('h2', {}, 'Waiting, in the order they will start'), wait,
		el('h2', {}, 'Failed'), failed);
	const cancel = (id) => el('button', { type: 'button', class: 'danger cancel', dataset: { scan: id }, onclick: async (e) => {
		e.target.disabled = true;
		await act('POST', '/v1/scans/' + id + '/cancel', 'scan ' + id + ' cancelled');
	} }, 'Cancel');
	refresh(async () => {
		const [q, f] = await Promise.all([api('GET', '/v1/queue?limit=200'), api('GET', '/v1/scans?state=failed&limit=50')]);
		run.replaceChildren(table(['#scan', 'VM', 'priority', 'datastores', 'started', 'progress', '#files', '#read', 'ETA', ''],
			q.running.map(j => {
				const p = j.progress || {};
				const elapsed = (Date.now() - new Date(j.started_at).getTime()) / 1000;
				const speed = p.bytes / Math.max(elapsed, 1);
				const eta = p.listed && speed > 0 ? dur((p.total_bytes - p.bytes) / speed) : (p.listed ? '' : 'listing files…');
				return el('tr', { dataset: { scan: j.id } },
					el('td', { class: 'num' }, j.id), el('td', {}, j.vm), el('td', {}, j.priority),
					el('td', {}, [...new Set(j.disks.map(d => d.datastore))].join(', ')),
					el('td', {}, ago(j.started_at)),
					el('td', {}, el('progress', { max: Math.max(p.total_bytes || 0, 1), value: p.bytes || 0 }), ' ',
						p.total_bytes ? Math.floor(100 * p.bytes / p.total_bytes) + '% of ' + bytes(p.total_bytes) : ''),
					el('td', { class: 'num' }, num(p.files) + ' / ' + num(p.total_files)),
					el('td', { class: 'num' }, bytes(p.bytes_read)),
					el('td', { class: 'eta' }, eta), el('td', {}, cancel(j.id)));
			}), 'No scan runs.'));
		wait.replaceChildren(
			el('p', { class: 'muted' }, `${q.waiting_total} waiting; ${q.running.length} of ${q.max_scans} scan slots in use.`),
			table(['#position', '#scan', 'VM', 'priority', 'enqueued', 'why it waits', ''],
				q.waiting.map(w => el('tr', { dataset: { scan: w.scan.id, reason: w.reason } },
					el('td', { class: 'num' }, w.position), el('td', { class: 'num' }, w.scan.id), el('td', {}, w.scan.vm),
					el('td', {}, w.scan.priority), el('td', {}, ago(w.scan.enqueued_at)), el('td', {}, reasonText(w)),
					el('td', {}, cancel(w.scan.id)))), 'Nothing waits.'));
		failed.replaceChildren(table(['#scan', 'VM', 'ended', '#attempts', 'error', ''],
			f.scans.map(s => el('tr', {}, el('td', { class: 'num' }, s.id), el('td', {}, s.vm), el('td', {}, ago(s.finished_at)),
				el('td', { class: 'num' }, s.attempts), el('td', { class: 'mono' }, s.error),
				el('td', {}, link('/v1/reports/scans/' + s.id, 'report')))), 'No failed scan.'));
	}, 2000);
}

async function pageVMs(main) {
	const params = new URLSearchParams(location.search);
	const search = el('input', { type: 'search', id: 'vm-search', placeholder: 'name contains…', value: params.get('search') || '' });
	const list = el('div', { id: 'vms' });
	const form = el('form', { class: 'filters', onsubmit: e => { e.preventDefault(); location.search = query({ search: search.value }); } },
		el('label', {}, 'Search by name', search), el('button', { type: 'submit', class: 'primary' }, 'Search'));
	main.replaceChildren(el('h1', {}, 'VMs'), form, list);
	const [sig] = await Promise.all([api('GET', '/v1/signatures')]);
	const active = sig.active ? sig.active.version : 0;
	const after = params.get('after') || '';
	const r = await api('GET', '/v1/vms' + query({ search: params.get('search'), after, limit: 100 }));
	list.replaceChildren(table(['VM', 'source', '#disks', 'last scan', 'result', '#findings', 'signatures', ''],
		r.vms.map(v => el('tr', { dataset: { vm: v.id } },
			el('td', {}, v.name || v.id, v.name && v.name !== v.id ? el('span', { class: 'muted' }, ' (' + v.id + ')') : null),
			el('td', {}, v.source), el('td', { class: 'num' }, (v.disks || []).length),
			el('td', {}, v.last_scanned ? ago(v.last_scanned) : 'never', v.last_scanned ? el('div', { class: 'muted' }, when(v.last_scanned)) : null),
			el('td', {}, v.last_status ? badge(v.last_status) : badge('not scanned', 'warn')),
			el('td', { class: 'num' }, v.last_findings ? link('/console/findings' + query({ vm: v.id }), num(v.last_findings)) : '0'),
			el('td', {}, v.last_sig_version ? 'v' + v.last_sig_version : '', v.last_sig_version && v.last_sig_version < active ? badge('behind', 'warn') : null),
			el('td', {}, link('/console/findings' + query({ vm: v.id }), 'findings'), ' ', v.last_job ? link('/v1/reports/scans/' + v.last_job, 'report') : null))),
		'No VM matches.'));
	if (r.next_after) list.append(el('div', { class: 'pager' }, link('/console/vms' + query({ search: params.get('search'), after: r.next_after }), 'Next page →')));
	status('updated ' + new Date().toLocaleTimeString('en-GB'));
}

async function pageFindings(main) {
	const params = new URLSearchParams(location.search);
	const f = {};
	const field = (name, label, type) => {
		f[name] = el('input', { type: type || 'text', id: 'f-' + name, name, value: params.get(name) || '' });
		return el('label', {}, label, f[name]);
	};
	const form = el('form', { class: 'filters', id: 'finding-filters', onsubmit: e => {
		e.preventDefault();
		const q = {};
		for (const [k, inp] of Object.entries(f)) q[k] = inp.value && (k === 'since' || k === 'until') ? new Date(inp.value).toISOString() : inp.value;
		location.search = query(q);
	} }, field('vm', 'VM'), field('rule', 'Rule'), field('tag', 'Tag'), field('since', 'Since (UTC)', 'datetime-local'),
		field('until', 'Until (UTC)', 'datetime-local'), el('button', { type: 'submit', class: 'primary' }, 'Filter'));
	for (const k of ['since', 'until']) if (params.get(k)) f[k].value = params.get(k).replace(/(:\d\d)(\.\d+)?Z$/, '$1');
	const list = el('div', { id: 'findings' });
	main.replaceChildren(el('h1', {}, 'Findings'), form, list);
	const q = { vm: params.get('vm'), rule: params.get('rule'), tag: params.get('tag'), since: params.get('since'), until: params.get('until'), after: params.get('after'), limit: 100 };
	const r = await api('GET', '/v1/findings' + query(q));
	const rows = [];
	for (const x of r.findings) {
		const detail = el('tr', { class: 'detail', hidden: true }, el('td', { colspan: 7 }, findingDetail(x)));
		rows.push(el('tr', { dataset: { finding: x.id }, class: 'finding', onclick: () => { detail.hidden = !detail.hidden; } },
			el('td', {}, when(x.found_at)), el('td', {}, x.vm), el('td', { class: 'mono' }, x.path),
			el('td', {}, x.volume), el('td', {}, x.namespace ? el('span', { class: 'muted' }, x.namespace + ':') : null, x.rule),
			el('td', {}, (x.tags || []).map(t => badge(t, 'tag'))), el('td', { class: 'mono' }, x.sha256.slice(0, 16) + '…')), detail);
	}
	list.replaceChildren(el('p', { class: 'muted' }, 'Click a finding for its rule meta, matched strings and hash.'),
		table(['found', 'VM', 'path', 'volume', 'rule', 'tags', 'SHA-256'], rows, 'No finding matches.'));
	if (r.next_after) list.append(el('div', { class: 'pager' }, link('/console/findings' + query({ ...q, limit: null, after: r.next_after }), 'Next page →')));
	status('updated ' + new Date().toLocaleTimeString('en-GB'));
}

function printable(b64) {
	const raw = atob(b64 || '');
	let s = '', hex = '';
	for (let i = 0; i < raw.length; i++) {
		const c = raw.charCodeAt(i);
		s += c >= 32 && c < 127 ? raw[i] : '.';
		hex += c.toString(16).padStart(2, '0') + ' ';
	}
	return [s, hex.trim()];
}

function findingDetail(x) {
	const meta = (x.meta || []).map(m => el('div', {}, el('span', { class: 'muted' }, m.key + ' = '), String(m.value)));
	const strs = (x.strings || []).map(s => {
		const [txt, hex] = printable(s.data);
		return el('div', { class: 'mono' }, s.identifier + ' at ' + s.offset + ': ', el('b', {}, txt), el('span', { class: 'muted' }, '  [' + hex + ']'));
	});
	return el('dl', { class: 'kv' },
		el('dt', {}, 'VM, datastore, disk'), el('dd', {}, `${x.vm} · ${x.datastore} · ${x.disk}`),
		el('dt', {}, 'volume, path'), el('dd', { class: 'mono' }, `${x.volume} ${x.path}`),
		el('dt', {}, 'size, SHA-256'), el('dd', { class: 'mono' }, `${bytes(x.size)} · ${x.sha256}`),
		el('dt', {}, 'rule'), el('dd', {}, `${x.namespace}:${x.rule} (signatures v${x.sig_version})`),
		el('dt', {}, 'meta'), el('dd', {}, meta.length ? meta : el('span', { class: 'muted' }, 'none')),
		el('dt', {}, 'matched strings'), el('dd', {}, strs.length ? strs : el('span', { class: 'muted' }, 'not reported (the rule matched by condition)')),
		el('dt', {}, 'scan'), el('dd', {}, link('/v1/reports/scans/' + x.job_id, 'report of scan ' + x.job_id)));
}

async function pageSignatures(main) {
	const box = el('div', { id: 'signatures' });
	main.replaceChildren(el('h1', {}, 'Signatures'), box);
	refresh(async () => {
		const s = await api('GET', '/v1/signatures');
		const a = s.active;
		const rows = a ? [
			['set', a.name], ['version', 'v' + a.version], ['rules', num(a.rule_count)], ['files', num(a.files)],
			['installed', when(a.installed) + ' (' + ago(a.installed) + ')'], ['built', when(a.created)],
			['signed by key', a.key_id], ['bundle SHA-256', a.digest],
		] : [['active set', 'none: this appliance does not scan until a signature set is installed']];
		const server = s.server;
		let srv;
		if (!server || !server.url) srv = el('p', { class: 'muted' }, 'No central signature server configured: bundles arrive by push only.');
		else srv = el('dl', { class: 'kv', id: 'server' },
			el('dt', {}, 'server'), el('dd', { class: 'mono' }, server.url),
			el('dt', {}, 'last check'), el('dd', {}, server.checked_at ? when(server.checked_at) + ' (' + ago(server.checked_at) + ')' : 'not yet'),
			el('dt', {}, 'newest on the server'), el('dd', {}, server.version ? 'v' + server.version : 'unknown'),
			el('dt', {}, 'reached this appliance'), el('dd', {}, server.up_to_date ? badge('yes', 'ok') : badge('no', 'bad'),
				server.error ? el('span', { class: 'error' }, ' ' + server.error) : null));
		box.replaceChildren(el('dl', { class: 'kv', id: 'active' }, rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { class: k.includes('SHA') || k.includes('key') ? 'mono' : null }, v)])),
			el('h2', {}, 'Central server'), srv);
	}, 10000);
}

async function pageEvents(main) {
	const box = el('div', { id: 'sinks' });
	main.replaceChildren(el('h1', {}, 'Event delivery'), el('p', { class: 'muted' },
		'Findings, failed and incomplete scans, unreadable VMs and signature updates go to each sink through its own bounded queue: a slow SIEM never holds up scanning; what does not fit is dropped and counted here.'), box);
	refresh(async () => {
		const r = await api('GET', '/v1/events');
		box.replaceChildren(table(['sink', 'type', 'format', '#sent', '#dropped', '#failed', '#queued', 'connection', 'last error'],
			r.sinks.map(s => el('tr', { dataset: { sink: s.name } }, el('td', { class: 'mono' }, s.name), el('td', {}, s.type + (s.network ? ' (' + s.network + ')' : '')),
				el('td', {}, s.format), el('td', { class: 'num' }, num(s.sent)),
				el('td', { class: 'num' }, s.dropped ? badge(num(s.dropped), 'bad') : '0'), el('td', { class: 'num' }, s.failed ? badge(num(s.failed), 'bad') : '0'),
				el('td', { class: 'num' }, num(s.queued) + ' / ' + num(s.capacity)),
				el('td', {}, s.network === 'tcp' || s.network === 'tls' ? (s.connected ? badge('connected', 'ok') : badge('down', 'bad')) : ''),
				el('td', {}, s.last_error ? [el('span', { class: 'error' }, s.last_error), el('div', { class: 'muted' }, ago(s.last_error_at))] : ''))),
			'No sink configured (events.log "none", no webhook, no syslog).'));
	}, 5000);
}

async function pageReports(main) {
	const day = 86400 * 1000;
	const iso = d => new Date(d).toISOString().slice(0, 16);
	const since = el('input', { type: 'datetime-local', id: 'r-since', value: iso(Date.now() - 7 * day) });
	const until = el('input', { type: 'datetime-local', id: 'r-until', value: iso(Date.now() + 60000) });
	const sched = el('input', { type: 'number', id: 'r-schedule', value: '24', min: '1', max: '8760' });
	const go = el('button', { type: 'submit', class: 'primary' }, 'Open report');
	main.replaceChildren(el('h1', {}, 'Reports'),
		el('p', { class: 'muted' }, 'Printable reports of findings and coverage. A per-scan report is linked from the Queue, VMs and Findings pages.'),
		el('form', { class: 'filters', id: 'period', onsubmit: e => {
			e.preventDefault();
			location.assign('/v1/reports/period' + query({ since: new Date(since.value + 'Z').toISOString(), until: new Date(until.value + 'Z').toISOString(), schedule_hours: sched.value }));
		} }, el('label', {}, 'From (UTC)', since), el('label', {}, 'To (UTC)', until),
			el('label', {}, 'Schedule: every VM within (hours)', sched), go));
}

const pages = { datastores: pageDatastores, queue: pageQueue, vms: pageVMs, findings: pageFindings, signatures: pageSignatures, events: pageEvents, reports: pageReports };

async function start() {
	const name = location.pathname.split('/')[2] || 'datastores';
	for (const a of document.querySelectorAll('#nav a')) if (a.getAttribute('href') === '/console/' + name) a.classList.add('active');
	document.title = 'snapscan — ' + name;
	const main = document.getElementById('main');
	try {
		const s = await api('GET', '/console/session');
		state.csrf = s.csrf;
	} catch (e) {
		return;
	}
	document.getElementById('logout').addEventListener('click', async () => {
		await fetch('/console/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': state.csrf } });
		location.assign('/console/login');
	});
	try {
		await (pages[name] || pageDatastores)(main);
	} catch (e) {
		if (e.status !== 401) main.replaceChildren(el('p', { class: 'error' }, 'Could not load this page: ' + e.message));
	}
}

document.addEventListener('DOMContentLoaded', start);
