// test_serve_openai.js BASE_URL API_KEY SERVED_NAME: the official `openai` npm client against a
// running `darkhorse serve` (test_serve.sh installs the package and sets NODE_PATH).
// A completion, a chat completion, a streamed chat completion (the same text as the whole one),
// errors as the client's typed exceptions, 16 concurrent greedy requests that must give exactly
// what each gives alone, and clients that disconnect: their sequences must be freed (running
// sequences and KV cache use back to 0 in /metrics within a bounded wait). Exits 1 on failure.
'use strict';
const { OpenAI } = require('openai');

const [, , base, key, served] = process.argv;
const client = new OpenAI({ baseURL: base + '/v1', apiKey: key, maxRetries: 0, timeout: 120000 });
let passed = 0, failed = 0;

function check(cond, what, detail) {
  if (cond) { passed++; return; }
  failed++;
  console.log(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail)}`);
}

function checkShares(r, what) {
  const ds = r.darkhorse && r.darkhorse.domain_share;
  check(ds && Object.keys(ds).length === 10, `${what}: ten domain shares`, r.darkhorse);
  if (ds) {
    const sum = Object.values(ds).reduce((a, b) => a + b, 0);
    check(Math.abs(sum - 1) < 1e-6, `${what}: domain shares sum to 1`, sum);
  }
}

async function metric(name) {
  const text = await (await fetch(base + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

// poll /metrics until running sequences and KV use are 0: at most 30 s (no timing assertion)
async function waitIdle(what) {
  let run = NaN, kv = NaN;
  for (let i = 0; i < 300; i++) {
    run = await metric('darkhorse_running_sequences');
    kv = await metric('darkhorse_kv_cache_used_tokens');
    if (run === 0 && kv === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check(run === 0 && kv === 0, `${what}: running sequences and KV use return to 0`, { run, kv });
}

async function basics() {
  const c = await client.completions.create({ model: 'anything', prompt: 'The capital of France is',
                                              max_tokens: 8, temperature: 0 });
  check(c.object === 'text_completion' && c.id.startsWith('cmpl-'), 'completion: object and id', c);
  check(c.model === served, 'completion: the served name is echoed', c.model);
  check(typeof c.choices[0].text === 'string' && ['stop', 'length'].includes(c.choices[0].finish_reason),
        'completion: text and finish_reason', c.choices[0]);
  check(c.usage.prompt_tokens > 0 && c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens,
        'completion: usage', c.usage);
  checkShares(c, 'completion');

  const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello.' }];
  const chat = await client.chat.completions.create({ messages, max_tokens: 10, temperature: 0 });
  check(chat.object === 'chat.completion' && chat.id.startsWith('chatcmpl-'), 'chat: object and id', chat);
  check(chat.choices[0].message.role === 'assistant' && typeof chat.choices[0].message.content === 'string',
        'chat: an assistant message', chat.choices[0]);
  check(chat.usage.completion_tokens >= 1, 'chat: usage', chat.usage);
  checkShares(chat, 'chat');

  const stream = await client.chat.completions.create({ model: 'x', messages, max_tokens: 10, temperature: 0,
                                                        stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, role = null, usage = null, last = null, n = 0;
  for await (const ch of stream) {
    n++;
    if (ch.choices.length) {
      const d = ch.choices[0].delta;
      if (d.role) role = d.role;
      if (d.content) text += d.content;
      if (ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason, last = ch;
    }
    if (ch.usage) usage = ch.usage;
    check(ch.object === 'chat.completion.chunk' && ch.model === served, 'stream: chunk object and model', ch);
  }
  check(n >= 3 && role === 'assistant', 'stream: a role chunk, then content', n);
  check(text === chat.choices[0].message.content, 'stream: the same text as the whole response',
        { stream: text, whole: chat.choices[0].message.content });
  check(finish === chat.choices[0].finish_reason, 'stream: the same finish_reason', finish);
  check(usage && usage.completion_tokens === chat.usage.completion_tokens, 'stream: usage', usage);
  if (last) checkShares(last, 'stream');
}

async function errors() {
  try {
    await client.completions.create({ prompt: 'x', temperature: 5 });
    check(false, 'a bad temperature is refused');
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature' &&
          e.type === 'invalid_request_error' && e.code === 'invalid_value', 'a bad temperature: 400 naming it',
          { status: e.status, param: e.param, code: e.code, message: e.message });
  }
  try {
    await client.chat.completions.create({ messages: [{ role: 'robot', content: 'x' }] });
    check(false, 'an unknown role is refused');
  } catch (e) {
    check(e.status === 400 && e.param === 'messages[0].role', 'an unknown role: 400 naming it', e.message);
  }
  const wrong = new OpenAI({ baseURL: base + '/v1', apiKey: key + 'x', maxRetries: 0 });
  try {
    await wrong.models.list();
    check(false, 'a wrong key is refused');
  } catch (e) {
    check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'a wrong key: 401', e.status);
  }
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === served, 'models: the served model', models.data);
}

async function concurrent() {
  const N = 16;
  const req = (i) => client.completions.create({
    prompt: `Request number ${i}: ${'abcdefghijklmnop'.slice(0, 1 + (i % 16))}`, max_tokens: 8, temperature: 0,
    ignore_eos: true });
  const alone = [];
  for (let i = 0; i < N; i++) alone.push((await req(i)).choices[0].text);
  const together = (await Promise.all([...Array(N).keys()].map(req))).map((r) => r.choices[0].text);
  let same = 0;
  for (let i = 0; i < N; i++) {
    if (together[i] === alone[i]) same++;
    else console.log(`  request ${i} alone: ${JSON.stringify(alone[i])}\n  together: ${JSON.stringify(together[i])}`);
  }
  check(same === N, `${N} concurrent greedy requests give what each gives alone`, `${same} of ${N}`);
  check(new Set(alone).size > 1, 'the requests are different', alone);
}

async function disconnects() {
  const before = await metric('darkhorse_client_disconnects_total');
  const body = (stream) => JSON.stringify({ prompt: 'Tell a long story.', max_tokens: 400, temperature: 0,
                                            ignore_eos: true, stream });
  const headers = { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` };
  // a stream: read its first chunk, then hang up
  const ac = new AbortController();
  const res = await fetch(base + '/v1/completions', { method: 'POST', headers, body: body(true), signal: ac.signal });
  const reader = res.body.getReader();
  const first = await reader.read();
  check(res.status === 200 && !first.done, 'disconnect: the stream started', res.status);
  ac.abort();
  await waitIdle('a stream abandoned');
  // a whole response: hang up while it runs
  const ac2 = new AbortController();
  const pending = fetch(base + '/v1/completions', { method: 'POST', headers, body: body(false), signal: ac2.signal })
    .catch((e) => e);
  for (let i = 0; i < 300 && (await metric('darkhorse_running_sequences')) < 1; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  ac2.abort();
  check((await pending).name === 'AbortError', 'disconnect: the whole response was abandoned');
  await waitIdle('a whole response abandoned');
  const after = await metric('darkhorse_client_disconnects_total');
  check(after - before === 2, 'disconnect: both counted', { before, after });
}

(async () => {
  try {
    await basics();
    await errors();
    await concurrent();
    await disconnects();
  } catch (e) {
    failed++;
    console.log('FAIL: unexpected exception:', e);
  }
  console.log(`openai client: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
