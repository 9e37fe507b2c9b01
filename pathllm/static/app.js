// pathllm web page: talks to the same server's REST API. No dependencies, no storage: the API key lives in `key` only.
'use strict';
const $ = id => document.getElementById(id);
let key = '', image = null, history = [], health = null;

function headers() { return key ? { 'X-API-Key': key } : {}; }
function show(id, on = true) { $(id).hidden = !on; }
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function error(msg) { $('error').textContent = msg; show('error', !!msg); }

async function api(path, form) {  // POST multipart; returns the JSON or throws the server's message
  const r = await fetch(path, { method: 'POST', headers: headers(), body: form });
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) throw new Error((body && (body.detail || (body.error && body.error.message))) || `HTTP ${r.status}`);
  return body;
}

async function loadHealth() {
  try {
    const r = await fetch('/health'); health = await r.json();
    $('model').textContent = `${health.model} · ${health.classes.join(' / ')} · ${health.device}` + (health.rag ? ' · references' : '');
  } catch (e) { $('model').textContent = 'server not reachable'; }
}

function bars(probs, label) {
  const box = $('bars'); box.replaceChildren();
  for (const [name, p] of Object.entries(probs)) {
    const row = el('div', 'bar' + (name === label ? ' top' : '')), track = el('div', 'track'), fill = el('div', 'fill');
    fill.style.width = `${(100 * p).toFixed(1)}%`; track.append(fill);
    row.append(el('span', 'name', name), track, el('span', 'pct', `${(100 * p).toFixed(1)}%`));
    row.dataset.cls = name; box.append(row);
  }
  show('classes');
}

function claims(list) {
  const ul = $('claims'); ul.replaceChildren();
  for (const c of list) {
    const li = el('li', 'claim'); li.dataset.status = c.status;
    li.append(el('span', 'badge ' + c.status, c.status), el('span', 'phrase', `“${c.phrase}” (${c.source}, ${c.feature})`));
    if (c.detail) li.title = c.detail;
    ul.append(li);
  }
  show('claimsbox', list.length > 0);
}

function refs(list) {
  const box = $('refs'); box.replaceChildren();
  for (const r of list || []) {
    const d = el('figure', 'ref');
    if (r.thumbnail && r.thumbnail.startsWith('data:image/')) { const img = el('img'); img.src = r.thumbnail; img.alt = `reference ${r.id}`; d.append(img); }
    d.append(el('div', 'label', `${r.label_name ?? 'unlabelled'} · similarity ${r.score.toFixed(3)}`), el('div', 'muted', r.caption));
    box.append(d);
  }
  show('refsbox', !!(list && list.length));
}

async function analyze(file) {
  error(''); image = file; history = []; $('chatlog').replaceChildren();
  $('preview').src = URL.createObjectURL(file); show('preview'); show('droptext', false);
  for (const id of ['classes', 'captionbox', 'reportbox', 'claimsbox', 'refsbox', 'chatbox']) show(id, false);
  show('busy');
  const form = new FormData(); form.append('image', file);
  try {
    const a = await api('/analyze', form);
    bars(a.probs, a.label);
    if (a.caption !== undefined) { $('caption').textContent = a.caption; show('captionbox'); }
    if (a.report !== undefined) { $('report').textContent = a.report; show('reportbox'); }
    claims(a.claims || []); refs(a.references);
    show('chatbox', health ? health.generative : true);
  } catch (e) { error(e.message); }
  finally { show('busy', false); }
}

function turn(who, text) {
  const d = el('div', 'turn ' + who); d.append(el('span', 'who', who === 'user' ? 'You' : 'Model'), el('span', 'text', text));
  $('chatlog').append(d); $('chatlog').scrollTop = $('chatlog').scrollHeight;
}

async function send(ev) {
  ev.preventDefault();
  const msg = $('message').value.trim();
  if (!msg || !image) return;
  error(''); $('message').value = ''; turn('user', msg);
  const form = new FormData(); form.append('image', image); form.append('message', msg); form.append('history', JSON.stringify(history));
  const btn = $('chatform').querySelector('button'); btn.disabled = true;
  try { const r = await api('/chat', form); history = r.history; turn('model', r.reply); }
  catch (e) { error(e.message); }
  finally { btn.disabled = false; }
}

function setup() {
  loadHealth();
  $('keyform').addEventListener('submit', ev => { ev.preventDefault(); key = $('apikey').value.trim(); $('apikey').value = ''; $('keystate').textContent = key ? 'key set' : 'no key'; });
  const drop = $('drop'), file = $('file');
  drop.addEventListener('click', () => file.click());
  drop.addEventListener('keydown', ev => { if (ev.key === 'Enter' || ev.key === ' ') file.click(); });
  file.addEventListener('change', () => { if (file.files.length) analyze(file.files[0]); });
  drop.addEventListener('dragover', ev => { ev.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', ev => { ev.preventDefault(); drop.classList.remove('over'); if (ev.dataTransfer.files.length) analyze(ev.dataTransfer.files[0]); });
  $('chatform').addEventListener('submit', send);
}
document.addEventListener('DOMContentLoaded', setup);
