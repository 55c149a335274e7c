// --fsync's values.
import { strict as assert } from 'assert';
import { parseArgs } from '../cli';
import { fsyncName, parseFsync } from './fsync';

describe('--fsync values', () => {
  it('never, always, interval=MS (1..1000); anything else is refused naming the value', () => {
    assert.deepEqual(parseFsync('never'), { kind: 'never' });
    assert.deepEqual(parseFsync('always'), { kind: 'always' });
    assert.deepEqual(parseFsync('interval=20'), { kind: 'interval', ms: 20 });
    assert.equal(fsyncName(parseFsync('interval=1000')), 'interval=1000');
    for (const bad of [undefined, '', 'Always', 'interval=', 'interval=0', 'interval=1001', 'interval=2.5', 'interval=-3']) {
      assert.throws(
        () => parseFsync(bad),
        (e: Error) => e.message.startsWith(`--fsync: ${JSON.stringify(bad ?? null)} is not never, always or interval=MS`),
      );
    }
  });

  it('the CLI takes --fsync with --state-dir only (cli.test.ts checks the exit code 2 of a bad value)', () => {
    const o = parseArgs(['--state-dir', '/nonexistent/never-created', '--fsync', 'interval=7']);
    assert.ok(typeof o === 'object' && o.fsync?.kind === 'interval' && o.fsync.ms === 7);
    assert.throws(() => parseArgs(['--fsync', 'always']), /--fsync: needs --state-dir/);
    assert.throws(
      () => parseArgs(['--state-dir', '/x', '--fsync', 'interval=0']),
      /--fsync: "interval=0" is not never, always or interval=MS \(MS from 1 to 1000\)/,
    );
  });
});
