/**
 * Preloaded into every test file's process (package.json `test:unit`): once
 * the file's tests are done, a process that something still holds open (a
 * server or socket a failing test never closed) is ended after a grace
 * period, naming what held it, instead of hanging the suite.
 *
 * This replaces `--test-force-exit`, which ends the process before the
 * runner has read all of its results: Node then reports fewer tests than ran,
 * at exit 0 (nodejs/node#64833). Here the results have long been written when
 * the timer fires, and the exit code is the runner's own (`process.exitCode`).
 */
import { after } from 'node:test';

const GRACE_MS = 10_000;

after(() => {
  setTimeout(() => {
    const held = process.getActiveResourcesInfo().filter((r) => r !== 'Timeout');
    process.stderr.write(
      `test process still held open ${GRACE_MS / 1000} s after its tests finished (by ${held.join(', ') || 'nothing listed'}): exiting; a test left something open\n`,
    );
    process.exit();
  }, GRACE_MS).unref();
});
