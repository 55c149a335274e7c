// The package is publishable: npm pack takes only the built library (dist/src,
// the generated stubs in dist/generated), README and package.json, and the
// "exports" entry points resolve to files in it.
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.join(__dirname, '..', '..');

describe('package @mur/client', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown> & {
    dependencies: Record<string, string>;
    exports: Record<string, string | Record<string, string>>;
  };

  it('package.json has what a registry needs and is not private', () => {
    assert.equal(pkg.private, undefined);
    for (const k of ['name', 'version', 'description', 'license', 'main', 'types', 'exports', 'files']) assert.ok(pkg[k], k);
    assert.ok(!Object.keys(pkg.dependencies).includes('@mur/server'), 'the server is a dev dependency only');
  });

  it('npm pack lists only dist (library and generated code) and README', function () {
    this.timeout(60_000);
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: root,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const files = (JSON.parse(out) as { files: { path: string }[] }[])[0].files.map((f) => f.path);
    const stray = files.filter((f) => !/^(dist\/(src|generated)\/.*\.(js|d\.ts)|README\.md|package\.json)$/.test(f));
    assert.deepEqual(stray, []);
    for (const f of [
      'dist/src/index.js',
      'dist/src/index.d.ts',
      'dist/src/tfjs.js',
      'dist/src/tfjs-worker.js',
      'dist/generated/mur/v1/optimizer.js',
      'dist/generated/google/protobuf/struct.js',
    ]) {
      assert.ok(files.includes(f), `${f} is packed`);
    }
    // Every export target is in the tarball.
    for (const [entry, target] of Object.entries(pkg.exports)) {
      const targets = typeof target === 'string' ? [target] : Object.values(target);
      for (const t of targets) assert.ok(files.includes(t.replace(/^\.\//, '')), `exports['${entry}'] -> ${t}`);
    }
  });

  it('the entry points load by package name', () => {
    // require by resolved path: the package's own exports map, not the TypeScript sources, is under test.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const main = require(require.resolve('@mur/client', { paths: [root] })) as Record<string, unknown>;
    assert.equal(typeof main.MurClient, 'function');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const tfjs = require(require.resolve('@mur/client/tfjs', { paths: [root] })) as Record<string, unknown>;
    assert.equal(typeof tfjs.murOptimizer, 'function');
  });
});
