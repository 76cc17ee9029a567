// Conformance suite: the same cases for every backend, run as root and as an ordinary user.
// Each case starts real boxes; network cases use servers on the host's loopback, reached only
// through the gateway by names pinned to 127.0.0.1.
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { chmodSync, copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { createTestCa, type TestCa } from "../gateway/support/test-ca.js";
import { boxCommand, boxUsers, chownTree, HOST_SECRET_NAME, HOST_SECRET_VALUE, makeWorkspace, runBox, runReview, show, TEST_BACKEND, writeOwned, type BoxRun, type BoxUser } from "./harness.js";

const BACKENDS = [TEST_BACKEND] as const;

/**
 * Cases that test one backend's own mechanism, with the reason another backend skips them. The
 * vm backend runs the command as the guest's root behind its own kernel.
 */
const NAMESPACE_ONLY: Readonly<Record<string, string>> = {
  "seccomp and privileges": "the guest kernel is the boundary; there is no host seccomp filter or capability set to check",
  "Node forwarder carries traffic": "the vm backend has no in-box forwarder; the net mux carries connections",
  "forwarder execs command once": "the vm backend has no in-box forwarder, and its agent starts the command",
};

/** Returns the skip reason for a case on this backend, or false to run it. */
function skipOn(backend: string, name: string): string | false {
  return backend === "namespace" ? false : (NAMESPACE_ONLY[name] ?? false);
}

/** The users each backend runs as: the vm backend needs root on hosts with the C virtiofsd. */
function usersFor(backend: string): BoxUser[] {
  const users = boxUsers();
  return backend === "vm" ? users.slice(0, 1) : users;
}

let httpServer: Server;
let httpsPort = 0;
let testCa: TestCa;
const TEST_TOKEN = "conformance-secret-7f3a9c";
let httpPort = 0;
let httpRequests = 0;
let rawConnections = 0;
let rawPort = 0;
let udpPort = 0;
let udpDatagrams = 0;
const closers: (() => void)[] = [];

before(async () => {
  httpServer = createHttpServer((request, response) => {
    httpRequests += 1;
    response.setHeader("content-type", "text/plain");
    response.end(`hello from loopback ${request.method} ${request.url}\n`);
  });
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  httpPort = (httpServer.address() as { port: number }).port;
  closers.push(() => httpServer.close());

  testCa = await createTestCa();
  const serverCert = await testCa.issue(["api.test"]);
  const httpsServer = createHttpsServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (request, response) => {
    response.end(request.headers.authorization === `Bearer ${TEST_TOKEN}` ? "upstream saw the real secret\n" : "upstream saw no secret\n");
  });
  await new Promise<void>((resolve) => httpsServer.listen(0, "127.0.0.1", resolve));
  httpsPort = (httpsServer.address() as { port: number }).port;
  closers.push(() => httpsServer.close());

  const raw = createNetServer((socket) => {
    rawConnections += 1;
    socket.destroy();
  });
  await new Promise<void>((resolve) => raw.listen(0, "127.0.0.1", resolve));
  rawPort = (raw.address() as { port: number }).port;
  closers.push(() => raw.close());

  const udp = createSocket("udp4");
  udp.on("message", () => {
    udpDatagrams += 1;
  });
  await new Promise<void>((resolve) => udp.bind(0, "127.0.0.1", resolve));
  udpPort = udp.address().port;
  closers.push(() => udp.close());
});

after(() => {
  for (const close of closers) close();
});

/** Writes a policy outside the workspace, owned by the user, and returns its path. */
function policyFile(user: BoxUser, text: string): string {
  const dir = makeWorkspace(user);
  const path = join(dir, "policy.yaml");
  writeOwned(user, path, text);
  return path;
}

/** Polls `condition` every 100 ms, at most 300 times; returns whether it became true. */
async function waitFor(condition: () => boolean): Promise<boolean> {
  for (let attempt = 0; attempt < 300; attempt += 1) {
    if (condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

/** Returns a run's workspace.change records as "CHANGE PATH", in the order of the audit log. */
function workspaceChanges(run: BoxRun): string[] {
  const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
  assert.ok(runDir !== undefined, show(run));
  const records = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; path?: string; change?: string });
  return records.filter((record) => record.type === "workspace.change").map((record) => `${record.change} ${record.path}`);
}

/** Returns whether --dry-run reports cgroup limits here, in which case the run names the limit reached. */
async function usesCgroups(user: BoxUser, workspace: string, policy: string): Promise<boolean> {
  const plan = await runBox(user, workspace, ["--policy", policy, "--dry-run"], []);
  return /^limits \(cgroup[12]\)/m.test(plan.stdout);
}

/** Compiles set-id-syscalls.c once, static where the C library allows it, and returns the binary's path. */
let setIdHelper: string | null = null;
function compileSetIdHelper(): string {
  if (setIdHelper !== null) return setIdHelper;
  const source = join(dirname(fileURLToPath(import.meta.url)), "set-id-syscalls.c");
  const output = join(mkdtempSync(join(tmpdir(), "ringfence-set-id-")), "set-id-syscalls");
  // -no-pie keeps the helper's data below 4 GiB, where its int 0x80 call can pass a pointer.
  let compiled = spawnSync("cc", ["-O2", "-static", "-no-pie", "-o", output, source], { encoding: "utf8" });
  if (compiled.status !== 0) compiled = spawnSync("cc", ["-O2", "-no-pie", "-o", output, source], { encoding: "utf8" });
  if (compiled.status !== 0) throw new Error(`compiling ${source} with cc failed: ${compiled.stderr}; install a C compiler`);
  setIdHelper = output;
  return output;
}

/** Returns a set-user-ID program in /usr/bin, which every box can read, to copy and link from. */
function hostSetUidProgram(): string {
  for (const name of readdirSync("/usr/bin").sort()) {
    const stats = lstatSync(join("/usr/bin", name));
    if (stats.isFile() && (stats.mode & 0o4000) !== 0 && (stats.mode & 0o004) !== 0) return join("/usr/bin", name);
  }
  throw new Error("no set-user-ID program that others can read is in /usr/bin; the set-ID tries need one to copy");
}

/** Lists the regular files below `root` that have a set-ID bit, relative to `root`. */
function setIdFiles(root: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(root, { recursive: true, encoding: "utf8" })) {
    const stats = lstatSync(join(root, entry));
    if (stats.isFile() && (stats.mode & 0o6000) !== 0) found.push(entry);
  }
  return found.sort();
}

for (const backend of BACKENDS) {
  for (const user of usersFor(backend)) {
    describe(`${backend} backend as ${user.name}`, () => {
      test("workspace visible and writable", async () => {
        const workspace = makeWorkspace(user, { "notes.txt": "from the host\n" });
        const run = await runBox(user, workspace, [], ["sh", "-c", 'pwd; cat notes.txt; echo from-the-box > out.txt; test -x /usr/bin/env && echo system-ok']);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, new RegExp(`^${workspace}$`, "m"));
        assert.match(run.stdout, /from the host/);
        assert.match(run.stdout, /system-ok/);
        assert.equal(readFileSync(join(workspace, "out.txt"), "utf8"), "from-the-box\n");
      });

      test("host paths hidden", async () => {
        writeOwned(user, join(user.home, ".ssh", "id_conformance"), "PRIVATE KEY\n");
        writeOwned(user, join(user.home, "outside-workspace.txt"), "home file\n");
        const workspace = makeWorkspace(user);
        const elsewhere = makeWorkspace(user, { "secret.txt": "other tmp dir\n" });
        const script = [
          `cat ${user.home}/.ssh/id_conformance 2>/dev/null && echo LEAK-ssh`,
          `cat ${user.home}/outside-workspace.txt 2>/dev/null && echo LEAK-home`,
          `cat ${elsewhere}/secret.txt 2>/dev/null && echo LEAK-tmp`,
          // The box's own home is an empty directory; /run holds only ringfence's forwarder and socket.
          `find /home /root /var /srv /mnt /media -mindepth 1 2>/dev/null | grep -v '^${user.home}$' | sed 's/^/LEAK-/'`,
          "ls -A /run | grep -v '^ringfence$' | sed 's/^/LEAK-run-/'",
          `find ${user.home} -mindepth 1 | sed 's/^/LEAK-home-/'`,
          "test -s /etc/shadow && echo LEAK-shadow",
          "ls /etc/ssh 2>/dev/null | grep -q . && echo LEAK-etc-ssh",
          "echo done",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /LEAK/, show(run));
        assert.match(run.stdout, /done/);
      });

      test("home as read-only workspace hides secrets", async () => {
        // With the home directory as the workspace, secret stores and ringfence's own run
        // records, audit key and cache inside it must still be hidden.
        writeOwned(user, join(user.home, ".ssh", "id_conformance"), "PRIVATE KEY\n");
        writeOwned(user, join(user.home, "visible-note.txt"), "note\n");
        await runBox(user, makeWorkspace(user), [], ["true"]);
        const script = "cat visible-note.txt; cat .ssh/id_conformance 2>/dev/null && echo LEAK-ssh; ls -A .local/state/ringfence/runs 2>/dev/null | grep -q . && echo LEAK-runs; cat .local/state/ringfence/keys/audit-ed25519.pem 2>/dev/null && echo LEAK-key; ls -A .cache/ringfence 2>/dev/null | grep -q . && echo LEAK-cache; echo done";
        const run = await runBox(user, user.home, ["--mode", "ro"], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^note$/m);
        assert.doesNotMatch(run.stdout, /LEAK/, show(run));
      });

      test("kernel settings read-only", async () => {
        const workspace = makeWorkspace(user);
        const script = "for p in /proc/sys/kernel/core_pattern /proc/sys/kernel/printk_ratelimit_burst; do if [ -w $p ]; then echo WRITABLE $p; fi; done; echo 3 > /proc/sys/kernel/printk_ratelimit_burst 2>/dev/null && echo WROTE; echo done";
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^done$/m, show(run));
        assert.doesNotMatch(run.stdout, /WRITABLE|WROTE/, show(run));
      });

      test("set-ID modes rejected during run", async () => {
        const workspace = makeWorkspace(user);
        const script = [
          "cp /bin/cat suidcat",
          "chmod 6755 suidcat 2>/dev/null && echo SET-6755",
          "chmod u+s suidcat 2>/dev/null && echo SET-u+s",
          "chmod g+s suidcat 2>/dev/null && echo SET-g+s",
          "install -m 4755 /bin/cat installed 2>/dev/null && echo SET-install",
          `node -e 'try { require("fs").openSync("created", "w", 0o4755); console.log("SET-open") } catch (e) { console.log("open " + e.code) }'`,
          "ls -l suidcat installed created 2>/dev/null",
          "chmod 755 suidcat && echo plain-chmod",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /SET-/, show(run));
        assert.match(run.stdout, /^open EPERM$/m, show(run));
        assert.match(run.stdout, /^plain-chmod$/m, show(run));
        for (const name of ["suidcat", "installed", "created"]) {
          if (existsSync(join(workspace, name))) assert.equal(statSync(join(workspace, name)).mode & 0o6000, 0, `${name}\n${show(run)}`);
        }
        assert.equal(statSync(join(workspace, "suidcat")).mode & 0o777, 0o755, show(run));
      });

      // Ways to give a file a set-ID bit, tried in the box, which must all fail. The seccomp filter
      // rejects the modes, in every call form and in the x32 and 32-bit ABIs. The kernel strips
      // the bits from mkdir and below a set-group-ID parent, and a hard link cannot cross into
      // the workspace's mount. As an ordinary user the after-run walk cannot list a directory of
      // mode 000, so the last try hides its file in one, and the host checks it after the run.
      test("set-ID file cannot be made", { timeout: 120_000 }, async () => {
        const workspace = makeWorkspace(user);
        copyFileSync(compileSetIdHelper(), join(workspace, "set-id-syscalls"));
        mkdirSync(join(workspace, "sgid-dir"));
        chownTree(workspace, user);
        chmodSync(join(workspace, "sgid-dir"), 0o2775);
        const program = hostSetUidProgram();
        const tries = [
          { name: "chmod 4755", command: "cp /bin/cat t-chmod; chmod 4755 t-chmod", file: "t-chmod" },
          { name: "chmod g+s", command: "cp /bin/cat t-chmod-g; chmod g+s t-chmod-g", file: "t-chmod-g" },
          { name: "install -m 4755", command: "install -m 4755 /bin/cat t-install", file: "t-install" },
          { name: "cp -p", command: `cp -p ${program} t-cp-p`, file: "t-cp-p" },
          { name: "cp -a", command: `cp -a ${program} t-cp-a`, file: "t-cp-a" },
          { name: "tar -p", command: `tar cf t.tar -C ${dirname(program)} ${program.split("/").pop()}; mkdir t-tar; tar xpf t.tar -C t-tar`, file: `t-tar/${program.split("/").pop()}` },
          { name: "hard link", command: `ln ${program} t-link`, file: "t-link" },
          { name: "perl chmod", command: `cp /bin/cat t-perl; perl -e 'chmod 04755, "t-perl"'`, file: "t-perl" },
          { name: "node open mode", command: `node -e 'require("fs").openSync("t-node", "w", 0o4755)'`, file: "t-node" },
          { name: "mkdir mode", command: `perl -e 'mkdir "t-mkdir", 06755'; cp /bin/cat t-mkdir/file`, file: "t-mkdir/file" },
          { name: "set-group-ID parent", command: "cp /bin/cat sgid-dir/file", file: "sgid-dir/file" },
          ...["chmod", "fchmod", "fchmodat", "fchmodat2", "x32-chmod", "i386-chmod"].map((call) => ({ name: `syscall ${call}`, command: `cp /bin/cat raw-${call}; ./set-id-syscalls ${call}`, file: `raw-${call}` })),
          ...["creat", "open", "openat", "openat2", "tmpfile", "mknod", "mknodat"].map((call) => ({ name: `syscall ${call}`, command: `./set-id-syscalls ${call}`, file: `raw-${call}` })),
          { name: "under mode 000", command: "mkdir hidden; cp /bin/cat hidden/file; chmod 4755 hidden/file; ./set-id-syscalls chmod; perl -e 'chmod 06755, \"hidden/file\"'", file: "hidden/file" },
        ];
        const check = (name: string, file: string): string => `if [ ! -e ${file} ]; then echo "try ${name}: missing"; elif [ -u ${file} ] || [ -g ${file} ]; then echo "try ${name}: SET-ID"; else echo "try ${name}: plain"; fi`;
        const script = [...tries.map((entry) => `(${entry.command}) >/dev/null 2>&1; ${check(entry.name, entry.file)}`), "chmod 000 hidden", "echo done"].join("\n");
        try {
          const run = await runBox(user, workspace, [], ["sh", "-c", script]);
          assert.equal(run.status, 0, show(run));
          assert.match(run.stdout, /^done$/m, show(run));
          const results = run.stdout.split("\n").filter((line) => line.startsWith("try "));
          assert.deepEqual(results.map((line) => line.slice(4, line.lastIndexOf(":"))), tries.map((entry) => entry.name), show(run));
          for (const line of results) assert.match(line, /: (plain|missing)$/, show(run));
          assert.doesNotMatch(run.stdout, /SET-ID/, show(run));
        } finally {
          chmodSync(join(workspace, "hidden"), 0o755);
        }
        assert.deepEqual(setIdFiles(workspace), []);
      });

      test("concurrent run cannot reach another", async () => {
        // The first run stays up until the second has looked; the second names ringfence's
        // state directory in filesystem.read and must still find it empty.
        const firstWorkspace = makeWorkspace(user);
        const first = runBox(user, firstWorkspace, [], ["sh", "-c", "touch started; while [ ! -e done ]; do sleep 0.1; done"]);
        // A first run that fails to start ends the wait instead of hanging the suite.
        let firstEnded = false;
        const markEnded = () => {
          firstEnded = true;
        };
        first.then(markEnded, markEnded);
        while (!existsSync(join(firstWorkspace, "started")) && !firstEnded) await new Promise((resolve) => setTimeout(resolve, 50));
        if (firstEnded) assert.fail(`the first run ended before its command started: ${show(await first)}`);

        const stateRoot = join(user.home, ".local", "state", "ringfence");
        const policy = policyFile(user, `version: 1\nfilesystem:\n  read: [${stateRoot}]\n`);
        const script = `ls -A ${stateRoot}/runs 2>/dev/null | grep -q . && echo LEAK-runs; find ${stateRoot} \\( -name audit.jsonl -o -name gateway.sock -o -name "*.pem" \\) 2>/dev/null | grep -q . && echo LEAK-files; echo looked`;
        const second = await runBox(user, makeWorkspace(user), ["--policy", policy], ["sh", "-c", script]);
        writeOwned(user, join(firstWorkspace, "done"), "");
        const firstRun = await first;

        assert.equal(second.status, 0, show(second));
        assert.match(second.stdout, /^looked$/m, show(second));
        assert.doesNotMatch(second.stdout, /LEAK/, show(second));
        assert.equal(firstRun.status, 0, show(firstRun));
      });

      test("writable home as workspace rejected", async () => {
        // A writable workspace that contains ringfence's state would let the box rename a parent
        // directory on the host and plant symlinks where ringfence writes after the run.
        for (const mode of ["rw", "overlay"]) {
          const run = await runBox(user, user.home, ["--mode", mode], ["true"]);
          assert.equal(run.status, 125, show(run));
          assert.match(run.stderr, /contains ringfence's own directory/, show(run));
        }
      });

      test("read-only mode and system directories", async () => {
        const workspace = makeWorkspace(user, { "file.txt": "keep\n" });
        const run = await runBox(user, workspace, ["--mode", "ro"], ["sh", "-c", "echo x > file.txt || echo ws-denied; echo x > new.txt || echo new-denied; touch /usr/x 2>/dev/null || echo usr-denied; touch /x 2>/dev/null || echo root-denied; echo tmp > /tmp/t && cat /tmp/t"]);
        assert.equal(run.status, 0, show(run));
        for (const marker of ["ws-denied", "new-denied", "usr-denied", "root-denied", "tmp"]) assert.match(run.stdout, new RegExp(marker), show(run));
        assert.equal(readFileSync(join(workspace, "file.txt"), "utf8"), "keep\n");
        assert.equal(existsSync(join(workspace, "new.txt")), false);
      });

      test("overlay mode keeps host untouched", async () => {
        const workspace = makeWorkspace(user, { "file.txt": "original\n" });
        const run = await runBox(user, workspace, ["--mode", "overlay"], ["sh", "-c", "echo changed > file.txt; echo new > added.txt; cat file.txt"]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /changed/);
        assert.equal(readFileSync(join(workspace, "file.txt"), "utf8"), "original\n");
        assert.equal(existsSync(join(workspace, "added.txt")), false);
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
        assert.ok(runDir !== undefined, show(run));
        assert.equal(readFileSync(join(runDir, "overlay", "workspace", "file.txt"), "utf8"), "changed\n");
        const changes = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; path?: string; change?: string });
        const recorded = changes.filter((record) => record.type === "workspace.change").map((record) => `${record.change} ${record.path}`);
        assert.deepEqual(recorded, ["added added.txt", "modified file.txt"]);
      });

      test("overlay name not valid UTF-8", async () => {
        // The walk of the overlay copy cannot name such a file, which ended the run with an
        // internal error, no run.end record and no change records.
        const workspace = makeWorkspace(user, { "file.txt": "original\n" });
        const run = await runBox(user, workspace, ["--mode", "overlay"], ["sh", "-c", 'echo changed > file.txt; printf x > "$(printf "bad\\377")"']);
        assert.equal(run.status, 0, show(run));
        assert.deepEqual(workspaceChanges(run), ["untracked "]);
        assert.match(run.stderr, /workspace changes were not recorded, because comparing the workspace failed: .*not valid UTF-8/);
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1] as string;
        const types = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => (JSON.parse(line) as { type: string }).type);
        assert.ok(types.includes("run.end"), types.join(" "));
      });

      test("workspace with a directory the user cannot list", async () => {
        // Root lists a directory of mode 000 anyway. An ordinary user cannot, so the run goes on
        // and records that the directory's contents were not checked.
        const workspace = makeWorkspace(user, { "file.txt": "one\n", "locked/inner.txt": "x\n" });
        chmodSync(join(workspace, "locked"), 0o000);
        try {
          const run = await runBox(user, workspace, [], ["sh", "-c", "echo two > file.txt"]);
          assert.equal(run.status, 0, show(run));
          const expected = user.uid === 0 ? ["modified file.txt"] : ["modified file.txt", "untracked locked"];
          assert.deepEqual(workspaceChanges(run), expected);
          if (user.uid !== 0) assert.match(run.stderr, /could not check .*locked .*EACCES/);
        } finally {
          chmodSync(join(workspace, "locked"), 0o755);
        }
      });

      // The box writes a file, then takes away permissions on its directory. The audit log must
      // still list the file, or name what went unchecked. With mode 444 an ordinary user lists
      // the names but cannot lstat them, so the entries must not come out as deleted.
      const lockCases = [
        { mode: "000", unchecked: ["untracked dir"] },
        { mode: "444", unchecked: ["untracked dir/new.txt", "untracked dir/old.txt"] },
      ];
      for (const lock of lockCases) {
        test(`file hidden by chmod ${lock.mode} in the box`, async () => {
          const workspace = makeWorkspace(user, { "dir/old.txt": "x\n" });
          try {
            const run = await runBox(user, workspace, [], ["sh", "-c", `echo new > dir/new.txt && chmod ${lock.mode} dir`]);
            assert.equal(run.status, 0, show(run));
            const expected = user.uid === 0 ? ["modified dir", "added dir/new.txt"] : ["modified dir", ...lock.unchecked];
            assert.deepEqual(workspaceChanges(run), expected);
          } finally {
            chmodSync(join(workspace, "dir"), 0o755);
          }
        });
      }

      test("overlay copy the box made unreadable", async () => {
        // The overlay copy belongs to the user who runs ringfence, so an ordinary user cannot read
        // a directory of it that the box set to mode 000. Diff and apply read a missing entry as a
        // deletion, so they must refuse a copy they cannot read, not work from part of it.
        const workspace = makeWorkspace(user, { "dir/old.txt": "old\n" });
        const run = await runBox(user, workspace, ["--mode", "overlay"], ["sh", "-c", "echo new > dir/new.txt && chmod 000 dir"]);
        assert.equal(run.status, 0, show(run));
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
        assert.ok(runDir !== undefined, show(run));
        try {
          if (user.uid === 0) {
            assert.deepEqual(workspaceChanges(run), ["mode dir", "added dir/new.txt"], show(run));
            return;
          }
          assert.deepEqual(workspaceChanges(run), ["untracked "], show(run));
          assert.match(run.stderr, /workspace changes were not recorded, because comparing the workspace failed: listing \S+\/dir failed/, show(run));
          for (const command of ["diff", "apply"] as const) {
            const review = runReview(user, command, "last", dirname(runDir));
            assert.equal(review.status, 1, show(review));
            assert.match(review.stderr, /listing \S+\/dir failed: EACCES.*make the directory readable/, show(review));
          }
          assert.deepEqual(readdirSync(join(workspace, "dir")), ["old.txt"]);
        } finally {
          chmodSync(join(runDir, "overlay", "workspace", "dir"), 0o755);
        }
      });

      test("git usable in protected repository", async () => {
        const workspace = makeWorkspace(user, { "file.txt": "one\n" });
        const git = (...args: string[]) => spawnSync("git", ["-c", "safe.directory=*", "-C", workspace, ...args], { encoding: "utf8" });
        assert.equal(git("init", "-q").status, 0);
        assert.equal(git("-c", "user.name=t", "-c", "user.email=t@example.test", "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "start").status, 0);
        spawnSync("chown", ["-R", `${user.uid}:${user.gid}`, workspace]);
        const script = "echo two > file.txt && git add file.txt && git -c user.name=t -c user.email=t@example.test commit -q -m change && git log --oneline | wc -l && git status --porcelain && echo git-ok";
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^2\ngit-ok$/m, show(run));
        assert.equal(existsSync(join(workspace, ".git", "commondir")), false, show(run));
      });

      test("protected paths stay read-only", async () => {
        const workspace = makeWorkspace(user, { ".git/config": "[core]\n", ".git/HEAD": "ref: refs/heads/main\n", ".git/hooks/pre-push.sample": "#!/bin/sh\n", "src/app.js": "1\n" });
        const script = [
          "echo evil > .git/hooks/pre-commit 2>/dev/null && echo WROTE-new-hook",
          "echo evil >> .git/hooks/pre-push.sample 2>/dev/null && echo WROTE-old-hook",
          "echo evil >> .git/config 2>/dev/null && echo WROTE-config",
          "ln -s .git/hooks/pre-commit link 2>/dev/null; echo evil > link 2>/dev/null && echo WROTE-symlink",
          "ln .git/config hardlink 2>/dev/null && echo LINKED-config",
          "mv .git/hooks hooks-moved 2>/dev/null && echo MOVED-hooks",
          "mv .git git-moved 2>/dev/null && echo MOVED-git",
          "rm -rf .git/hooks 2>/dev/null; test -d .git/hooks || echo REMOVED-hooks",
          "mkdir -p .GIT/hooks && echo evil > .GIT/hooks/pre-commit",
          "echo evil > .envrc",
          "echo ok > src/app.js && echo src-written",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /WROTE|LINKED|MOVED|REMOVED/, show(run));
        assert.match(run.stdout, /src-written/);
        assert.equal(existsSync(join(workspace, ".git", "hooks", "pre-commit")), false);
        assert.equal(readFileSync(join(workspace, ".git", "config"), "utf8"), "[core]\n");
        // Names in another case and new protected files are moved out of the workspace after the run.
        assert.equal(existsSync(join(workspace, ".GIT", "hooks")), false, show(run));
        assert.equal(existsSync(join(workspace, ".envrc")), false, show(run));
        assert.match(run.stderr, /protected paths created or replaced during the run/);
      });

      test("planted .git symlink rejected", async () => {
        const workspace = makeWorkspace(user, { "readme.txt": "no repository yet\n" });
        const run = await runBox(user, workspace, [], ["sh", "-c", "mkdir -p planted/hooks && echo evil > planted/hooks/pre-commit && ln -sfT planted .git 2>/dev/null && echo PLANTED; true"]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /PLANTED/, show(run));
        assert.equal(existsSync(join(workspace, ".git")), false, show(run));
      });

      test("planted .git file rejected", async () => {
        const workspace = makeWorkspace(user, { "readme.txt": "no repository yet\n" });
        const run = await runBox(user, workspace, [], ["sh", "-c", "mkdir -p planted/hooks && echo evil > planted/hooks/pre-commit && (echo 'gitdir: planted' > .git) 2>/dev/null && echo PLANTED; rm -rf .git 2>/dev/null; mv .git moved 2>/dev/null && echo MOVED; true"]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /PLANTED|MOVED/, show(run));
        assert.equal(existsSync(join(workspace, ".git")), false, show(run));
        assert.equal(existsSync(join(workspace, "moved")), false, show(run));
      });

      test("worktree .git file read-only", async () => {
        const workspace = makeWorkspace(user, { ".git": "gitdir: /elsewhere/.git/worktrees/w\n" });
        const run = await runBox(user, workspace, [], ["sh", "-c", "echo 'gitdir: planted' > .git 2>/dev/null && echo REWROTE; true"]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /REWROTE/);
        assert.equal(readFileSync(join(workspace, ".git"), "utf8"), "gitdir: /elsewhere/.git/worktrees/w\n");
      });

      test("protected path unwritable without parent", async () => {
        // No .git yet: the run makes .git and its protected entries before the box starts, so
        // the hook cannot be written while the command runs, and removes them afterwards.
        const workspace = makeWorkspace(user, { "readme.txt": "no repository yet\n", ".github/README.md": "docs\n" });
        const script = [
          "mkdir -p .git/hooks; (echo evil > .git/hooks/pre-commit) 2>/dev/null && echo WROTE-hook",
          "(echo '[core]' > .git/config) 2>/dev/null && echo WROTE-config",
          "mkdir -p .git/info 2>/dev/null; (echo x > .git/info/attributes) 2>/dev/null && echo WROTE-info",
          "rmdir .git/hooks 2>/dev/null && echo REMOVED-hooks",
          "mkdir -p .github/workflows; (echo 'on: push' > .github/workflows/ci.yml) 2>/dev/null && echo WROTE-workflow",
          "mkdir -p .vscode; (echo '{}' > .vscode/tasks.json) 2>/dev/null && echo WROTE-vscode",
          "echo HEAD > .git/HEAD && echo git-dir-writable",
          "echo ok > src.txt && echo src-written",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /WROTE|REMOVED/, show(run));
        assert.match(run.stdout, /^git-dir-writable$/m, show(run));
        assert.match(run.stdout, /^src-written$/m, show(run));
        assert.equal(existsSync(join(workspace, ".git", "hooks")), false, show(run));
        assert.equal(existsSync(join(workspace, ".git", "config")), false, show(run));
        assert.equal(existsSync(join(workspace, ".github", "workflows")), false, show(run));
        assert.equal(existsSync(join(workspace, ".vscode")), false, show(run));
        assert.equal(readFileSync(join(workspace, ".git", "HEAD"), "utf8"), "HEAD\n");
      });

      test("whole host as workspace rejected", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, ["--workspace", "/"], ["true"]);
        assert.equal(run.status, 125, show(run));
        assert.match(run.stderr, /would give the box the whole host/);
      });

      test("missing workspace rejected", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, ["--workspace", join(workspace, "no-such-dir")], ["true"]);
        assert.equal(run.status, 125, show(run));
        assert.match(run.stderr, /does not exist or is not a directory; create it, or choose another with --workspace DIR/);
      });

      test("pre-existing hard link rejected", async () => {
        const workspace = makeWorkspace(user, { ".git/config": "[core]\n" });
        linkSync(join(workspace, ".git", "config"), join(workspace, "config-alias"));
        const run = await runBox(user, workspace, [], ["true"]);
        assert.equal(run.status, 125, show(run));
        assert.match(run.stderr, /hard links/);
      });

      test("protected symlink rejected", async () => {
        const workspace = makeWorkspace(user, { "target.sh": "echo\n" });
        symlinkSync("target.sh", join(workspace, ".envrc"));
        const run = await runBox(user, workspace, [], ["true"]);
        assert.equal(run.status, 125, show(run));
        assert.match(run.stderr, /is a symlink/);
      });

      test("allowed host through gateway", async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: api.test\n      ports: [${httpPort}]\n      addresses: ["127.0.0.1"]\n      action: allow\n`);
        const node = `const http=require("node:http");const u=new URL(process.env.HTTP_PROXY);http.get({host:u.hostname,port:u.port,path:"http://api.test:${httpPort}/node",headers:{host:"api.test:${httpPort}"}},(r)=>{let b="";r.on("data",(c)=>b+=c);r.on("end",()=>console.log("node",r.statusCode,b.trim()))}).on("error",(e)=>console.log("node-error",e.message))`;
        const script = [
          `curl -sS -m 10 http://api.test:${httpPort}/plain`,
          `curl -sS -m 10 --proxytunnel http://api.test:${httpPort}/tunnel`,
          `curl -sS -m 10 --proxy socks5h://127.0.0.1:3128 http://api.test:${httpPort}/socks`,
          `node -e '${node}'`,
        ].join("; ");
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /hello from loopback GET \/plain/);
        assert.match(run.stdout, /hello from loopback GET \/tunnel/);
        assert.match(run.stdout, /hello from loopback GET \/socks/);
        assert.match(run.stdout, /node 200 hello from loopback GET \/node/);
      });

      test("credential injected over TLS", async () => {
        const workspace = makeWorkspace(user);
        const caFile = join(makeWorkspace(user), "upstream-ca.pem");
        writeOwned(user, caFile, testCa.certPem);
        const policy = policyFile(
          user,
          [
            "version: 1",
            "network:",
            "  upstream_proxy: none",
            "  rules:",
            `    - {host: api.test, ports: [${httpsPort}], addresses: ["127.0.0.1"], action: allow}`,
            "credentials:",
            "  - name: api-token",
            "    source: {env: RINGFENCE_TEST_TOKEN}",
            "    hosts: [api.test]",
            '    inject: {header: Authorization, format: "Bearer {secret}"}',
            "    placeholder_env: API_TOKEN",
            "",
          ].join("\n"),
        );
        const script = `echo "placeholder=$API_TOKEN"; env | grep -c ${TEST_TOKEN} || true; curl -sS -m 10 -H "Authorization: Bearer $API_TOKEN" https://api.test:${httpsPort}/`;
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", script], { env: { RINGFENCE_TEST_TOKEN: TEST_TOKEN, RINGFENCE_TEST_UPSTREAM_CA: caFile } });
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^placeholder=\S+$/m);
        assert.doesNotMatch(run.stdout, new RegExp(`placeholder=${TEST_TOKEN}`));
        assert.match(run.stdout, /^0$/m, "the secret is in the box's environment");
        assert.match(run.stdout, /upstream saw the real secret/, show(run));
        // The run's gateway started the upstream TLS thread, so the upstream leg ran on it.
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1] as string;
        const diagnostics = readFileSync(join(runDir, "ringfence.log"), "utf8");
        assert.match(diagnostics, /upstream TLS thread started/);
        assert.doesNotMatch(diagnostics, /upstream TLS thread is unavailable/);
      });

      test("leak with on_leak end-run stops box", async () => {
        const workspace = makeWorkspace(user);
        const caFile = join(makeWorkspace(user), "upstream-ca.pem");
        writeOwned(user, caFile, testCa.certPem);
        const policy = policyFile(
          user,
          [
            "version: 1",
            "network:",
            "  upstream_proxy: none",
            `  upstream_ca: [${caFile}]`,
            "  rules:",
            `    - {host: api.test, ports: [${httpsPort}], addresses: ["127.0.0.1"], action: allow}`,
            `    - {host: other.test, ports: [${httpPort}], addresses: ["127.0.0.1"], action: allow}`,
            "credentials:",
            "  - name: api-token",
            "    source: {env: RINGFENCE_TEST_TOKEN}",
            "    hosts: [api.test]",
            '    inject: {header: Authorization, format: "Bearer {secret}"}',
            "    placeholder_env: API_TOKEN",
            "    on_leak: end-run",
            "",
          ].join("\n"),
        );
        const script = `curl -s -m 10 -o /dev/null -w "%{http_code}\\n" -H "X-Token: $API_TOKEN" http://other.test:${httpPort}/; sleep 20; echo survived`;
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", script], { env: { RINGFENCE_TEST_TOKEN: TEST_TOKEN } });
        // The box may be stopped before curl prints the 403 it got, so only the outcome is checked.
        assert.doesNotMatch(run.stdout, /survived/, show(run));
        assert.notEqual(run.status, 0, show(run));
        assert.match(run.stderr, /stopped the box: credential api-token leaked towards other\.test/, show(run));
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1] as string;
        const audit = readFileSync(join(runDir, "audit.jsonl"), "utf8");
        assert.ok(!audit.includes(TEST_TOKEN), "the audit log holds the real secret");
        assert.match(audit, /"type":"credential".*"action":"blocked"/);
      });

      test("Node forwarder carries traffic", { skip: skipOn(backend, "Node forwarder carries traffic") }, async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: api.test\n      ports: [${httpPort}]\n      addresses: ["127.0.0.1"]\n      action: allow\n`);
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", `ls /run/ringfence; curl -sS -m 10 http://api.test:${httpPort}/via-node`], { env: { RINGFENCE_FORWARDER: "node" } });
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /forwarder\.mjs/);
        assert.match(run.stdout, /hello from loopback GET \/via-node/);
      });

      test("dry run prints box", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, ["--dry-run"], []);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, new RegExp(`^workspace: ${workspace} \\(mode rw\\)$`, "m"));
        assert.match(run.stdout, backend === "vm" ? /^micro-VM: QEMU microvm/m : /^bwrap --unshare-user /m);
        assert.match(run.stdout, /^ {2}hide {6}\/etc\/shadow/m);
      });

      test("proxy bypass attempts denied", async () => {
        const workspace = makeWorkspace(user);
        // api.test is allowed only on the server's port and pinned to 127.0.0.1; every other
        // spelling of the same server must be refused by the gateway.
        const policy = policyFile(user, `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: api.test\n      ports: [${httpPort}]\n      addresses: ["127.0.0.1"]\n      action: allow\n`);
        const targets = [
          `http://127.0.0.1:${httpPort}/ip-literal`,
          `http://localhost:${httpPort}/localhost`,
          `http://[::1]:${httpPort}/ipv6-loopback`,
          `http://2130706433:${httpPort}/decimal-ip`,
          `http://api.test:${httpPort + 1 === 65536 ? 1 : httpPort + 1}/other-port`,
          `http://API.TEST.:${httpPort}/case-and-dot`,
        ];
        const before = httpRequests;
        const lines = targets.flatMap((url) => [`curl -s -m 10 -o /dev/null -w "%{http_code} ${url}\\n" --noproxy '' -x http://127.0.0.1:3128 '${url}'`, `curl -s -m 10 -o /dev/null -w "%{http_code} socks ${url}\\n" --noproxy '' --socks5-hostname 127.0.0.1:3128 '${url}'`]);
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", lines.join("; ")]);
        assert.equal(run.status, 0, show(run));
        const reached = httpRequests - before;
        // The canonical spelling API.TEST. is the allowed host itself, so that request may pass.
        assert.ok(reached <= 2, `the loopback server was reached ${reached} times:\n${show(run)}`);
        for (const url of targets.slice(0, 5)) assert.match(run.stdout, new RegExp(`^(403|000) ${url.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m"), show(run));
      });

      test("denied host gets hint", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, [], ["sh", "-c", `curl -s -m 10 -o /dev/null -w "%{http_code}\\n" http://blocked.test:${httpPort}/; curl -sS -m 10 https://blocked.invalid/ 2>&1 | head -1`]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^403$/m);
        assert.match(run.stderr, /ringfence: blocked blocked\.test:\d+ .*--allow blocked\.test:\d+/);
        assert.match(run.stderr, /2 requests blocked/);
        const eventsPath = /events in (\S+audit\.jsonl)/.exec(run.stderr)?.[1] as string;
        const events = readFileSync(eventsPath, "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; decision?: string; host?: string });
        assert.ok(events.some((event) => event.type === "network" && event.decision === "deny" && event.host === "blocked.test"));
      });

      test("--allow flag opens host", async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, `version: 1\nnetwork:\n  upstream_proxy: none\n  rules:\n    - host: api.test\n      ports: [${httpPort}]\n      addresses: ["127.0.0.1"]\n      action: allow\n`);
        const run = await runBox(user, workspace, ["--policy", policy, "--allow", `other.test:${httpPort}`], ["sh", "-c", `curl -s -m 10 -o /dev/null -w "%{http_code}\\n" http://other.test:${httpPort}/`]);
        // other.test is allowed but not pinned, and the gateway resolves it with the system
        // resolver, which has no such name. The gateway returns an error status, not 403.
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /^403$/m, show(run));
      });

      test("direct network paths fail", async () => {
        const workspace = makeWorkspace(user);
        const before = { raw: rawConnections, udp: udpDatagrams };
        const script = [
          `curl -sS -m 5 --noproxy '*' http://127.0.0.1:${httpPort}/ 2>/dev/null && echo LEAK-noproxy`,
          `node -e 'require("node:net").connect(${rawPort},"127.0.0.1").on("connect",()=>console.log("LEAK-tcp")).on("error",(e)=>console.log("tcp",e.code))'`,
          `node -e 'const s=require("node:dgram").createSocket("udp4");s.send("x",${udpPort},"127.0.0.1",(e)=>{console.log("udp-sent-locally",e?e.code:"ok");s.close()})'`,
          "getent hosts ringfence-conformance.invalid && echo LEAK-dns",
          "cat /proc/net/route | tail -n +2 | grep -q . && echo LEAK-route",
          "ls /sys/class/net 2>/dev/null",
          "echo done",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /LEAK/, show(run));
        assert.match(run.stdout, /tcp ECONNREFUSED/);
        assert.equal(rawConnections, before.raw, "the host's TCP server saw a connection from the box");
        assert.equal(udpDatagrams, before.udp, "the host's UDP server saw a datagram from the box");
      });

      test("environment scrubbed", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, ["--env", "LANG"], ["sh", "-c", "env"]);
        assert.equal(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, new RegExp(HOST_SECRET_NAME));
        assert.doesNotMatch(run.stdout, new RegExp(HOST_SECRET_VALUE));
        for (const name of ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"]) assert.match(run.stdout, new RegExp(`^${name}=`, "m"), name);
        assert.match(run.stdout, /^PATH=\/usr\/local\/sbin:/m);
        assert.match(run.stdout, /^LANG=C.UTF-8$/m);
      });

      test("process isolation and cleanup", async () => {
        const workspace = makeWorkspace(user);
        const marker = `ringfence-orphan-${process.pid}-${user.uid}`;
        const script = `ps -e -o pid=,comm= | wc -l; ps -e -o comm= | grep -c node || true; (setsid sh -c 'exec -a ${marker} sleep 300' &) ; sleep 0.2; echo started`;
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        const [count] = run.stdout.trim().split("\n");
        // The guest's own kernel threads are listed in a VM, so the count applies to the namespace backend.
        if (backend === "namespace") assert.ok(Number(count) < 10, `box sees ${count} processes:\n${show(run)}`);
        assert.match(run.stdout, /^0$/m, "the box sees the host's node processes");
        const left = readdirSync("/proc").filter((name) => /^\d+$/.test(name)).filter((pid) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
          } catch {
            return false;
          }
        });
        assert.deepEqual(left, [], "a process started in the box survived the run");
      });

      test("seccomp and privileges", { skip: skipOn(backend, "seccomp and privileges") }, async () => {
        const workspace = makeWorkspace(user);
        const script = [
          "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status",
          `perl -e 'for my $n (101, 250, 248, 321, 323, 165, 272, 308) { my $r = syscall($n, 0, 0, 0, 0, 0); print "syscall $n: ", ($r == -1 ? "$!" : "ok"), "\\n" }'`,
          `perl -e 'my $c = "x"; print "TIOCSTI: ", (ioctl(STDIN, 0x5412, $c) ? "ok" : "$!"), "\\n"'`,
          "unshare -U true 2>/dev/null && echo LEAK-unshare",
          "echo done",
        ].join("; ");
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^CapEff:\s+0+$/m);
        assert.match(run.stdout, /^CapBnd:\s+0+$/m);
        assert.match(run.stdout, /^NoNewPrivs:\s+1$/m);
        assert.match(run.stdout, /^Seccomp:\s+2$/m);
        for (const number of [101, 250, 248, 321, 323, 165, 272, 308]) assert.match(run.stdout, new RegExp(`^syscall ${number}: Operation not permitted$`, "m"), show(run));
        assert.match(run.stdout, /^TIOCSTI: Operation not permitted$/m);
        assert.doesNotMatch(run.stdout, /LEAK/);
      });

      test("every exec recorded in order", { skip: skipOn(backend, "every exec recorded in order") }, async () => {
        const workspace = makeWorkspace(user);
        const script = `/bin/true; ls -d . >/dev/null; echo piped | cat >/dev/null; /bin/echo "two words" 'tab\there' >/dev/null; sh -c 'exec /usr/bin/env true'`;
        const run = await runBox(user, workspace, [], ["sh", "-c", script]);
        assert.equal(run.status, 0, show(run));
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
        assert.ok(runDir !== undefined, show(run));
        const records = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; seq: number; call?: string; exe?: string; path?: string; argv?: string[]; pid?: number; missing?: boolean });
        const execs = records.filter((record) => record.type === "exec" && record.missing !== true && record.call !== "executed");
        const executed = records.filter((record) => record.type === "exec" && record.call === "executed").map((record) => record.exe);
        // The namespace box's forwarder starts first, becomes the command and runs for the whole
        // command, so the supervisor always records it. The guest has no forwarder, so its
        // exec-audit supervisor records the command itself first.
        const first = backend === "vm" ? [] : ["forwarder"];
        if (backend === "vm") assert.ok(executed.some((exe) => exe?.endsWith("sh") === true), JSON.stringify(executed));
        else assert.ok(executed.includes("/run/ringfence/forwarder"), JSON.stringify(executed));
        const names = execs.map((record) => record.path?.split("/").pop());
        // Each later exec comes in the order run.
        assert.deepEqual(names, [...first, "sh", "true", "ls", "cat", "echo", "sh", "env", "true"], JSON.stringify(execs, null, 1));
        assert.deepEqual(execs[first.length + 4]?.argv, ["/bin/echo", "two words", "tab\there"]);
        assert.deepEqual(execs[first.length + 1]?.argv, ["/bin/true"]);
        for (const record of execs) assert.ok((record.pid ?? 0) > 0, JSON.stringify(record));
        // Guest records are marked, because the guest's kernel made them.
        for (const record of execs) assert.equal((record as { guest?: boolean }).guest, backend === "vm" ? true : undefined, JSON.stringify(record));
        const seqs = execs.map((record) => record.seq);
        assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));

        const plan = await runBox(user, workspace, ["--dry-run"], []);
        assert.match(plan.stdout, /^exec audit: every execve and execveat/m, show(plan));
      });

      test("forwarder execs command once", { skip: skipOn(backend, "forwarder execs command once") }, async () => {
        // The forwarder looks the command up on PATH before its one execve, where execvp would
        // try /usr/local/sbin/true, /usr/local/bin/true and others first.
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, [], ["true"]);
        assert.equal(run.status, 0, show(run));
        const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
        assert.ok(runDir !== undefined, show(run));
        const records = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; call?: string; path?: string; argv?: string[]; missing?: boolean });
        const commandExecs = records.filter((record) => record.type === "exec" && record.call === "execve" && record.argv?.[0] === "true");
        assert.equal(commandExecs.length, 1, JSON.stringify(commandExecs, null, 1));
        assert.notEqual(commandExecs[0]?.missing, true, JSON.stringify(commandExecs[0]));
        assert.match(commandExecs[0]?.path ?? "", /\/true$/);
      });

      test("second exec listener rejected", { skip: skipOn(backend, "second exec listener rejected") }, async () => {
        // A listener of the box's own would receive exec notifications before the host's.
        const source = [
          "#include <errno.h>",
          "#include <linux/filter.h>",
          "#include <linux/seccomp.h>",
          "#include <stdio.h>",
          "#include <string.h>",
          "#include <sys/syscall.h>",
          "#include <unistd.h>",
          "int main(void) {",
          "  struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};",
          "  struct sock_fprog program = {1, allow};",
          "  long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);",
          '  printf("listener: %s\\n", fd < 0 ? strerror(errno) : "created");',
          "  return 0;",
          "}",
        ].join("\n");
        const workspace = makeWorkspace(user, { "listener.c": source });
        const run = await runBox(user, workspace, [], ["sh", "-c", "cc -o /tmp/listener listener.c && /tmp/listener"]);
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /^listener: Device or resource busy$/m, show(run));
      });

      test("exec audit fails closed", { skip: skipOn(backend, "exec audit fails closed"), timeout: 120_000 }, async () => {
        // Killing the supervisor mid-run must end the box: no exec goes unrecorded. In the guest
        // the supervisor is the command's parent, which guest root can kill from inside.
        const workspace = makeWorkspace(user);
        if (backend === "vm") {
          const run = await runBox(user, workspace, [], ["sh", "-c", "kill -KILL $PPID; sleep 2; /bin/echo survived"]);
          assert.notEqual(run.status, 0, show(run));
          assert.doesNotMatch(run.stdout, /survived/, show(run));
          return;
        }
        const marker = `ringfence-exec-${process.pid}-${user.uid}`;
        const running = runBox(user, workspace, [], ["bash", "-c", `touch started; exec -a ${marker} sh -c 'while true; do sleep 0.1; done'`]);
        // The box loops until its supervisor dies, so a failed check ends the box before it raises.
        const boxPids = () =>
          readdirSync("/proc").filter((name) => /^\d+$/.test(name)).filter((pid) => {
            try {
              return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
            } catch {
              return false;
            }
          });
        const endBox = async () => {
          for (const pid of boxPids()) process.kill(Number(pid), "SIGKILL");
          await running;
        };
        if (!(await waitFor(() => existsSync(join(workspace, "started"))))) {
          await endBox();
          assert.fail("the box never started");
        }
        const supervisors = readdirSync("/proc").filter((name) => /^\d+$/.test(name)).filter((pid) => {
          try {
            const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
            // bwrap reads its mounts from a file, so the command, with the marker, names this run.
            return argv[1] === "supervise" && argv.some((arg) => arg.includes(marker));
          } catch {
            return false;
          }
        });
        if (supervisors.length !== 1) await endBox();
        assert.equal(supervisors.length, 1, "exactly one supervisor for this run");
        process.kill(Number(supervisors[0]), "SIGKILL");
        const run = await running;

        assert.notEqual(run.status, 0, show(run));
        assert.deepEqual(boxPids(), [], "a process of the box outlived its supervisor");
      });

      test("exit status and signals", async () => {
        const workspace = makeWorkspace(user);
        assert.equal((await runBox(user, workspace, [], ["sh", "-c", "exit 7"])).status, 7);
        assert.equal((await runBox(user, workspace, [], ["sh", "-c", "kill -TERM $$"])).status, 143);
        assert.equal((await runBox(user, workspace, [], ["sh", "-c", "kill -KILL $$"])).status, 137);
        const missing = await runBox(user, workspace, [], ["no-such-command-ringfence"]);
        assert.equal(missing.status, 127, show(missing));
      });

      test("stdin stdout stderr pass", async () => {
        const workspace = makeWorkspace(user);
        const run = await runBox(user, workspace, [], ["sh", "-c", "tr a-z A-Z; echo to-stderr >&2"], { input: "hello box\n" });
        assert.equal(run.status, 0, show(run));
        assert.equal(run.stdout, "HELLO BOX\n");
        assert.match(run.stderr, /^to-stderr$/m);
      });

      test("real terminal attached", async () => {
        const workspace = makeWorkspace(user);
        // script(1) gives the run a pseudo-terminal, as an interactive shell would.
        const run = await runBox(user, workspace, [], ["sh", "-c", "test -t 0 && test -t 1 && echo TTY-OK; stty size"], {
          wrap: (argv) => ["script", "-qec", argv.map((arg) => `'${arg.replace(/'/g, "'\\''")}'`).join(" "), "/dev/null"],
        });
        assert.equal(run.status, 0, show(run));
        assert.match(run.stdout, /TTY-OK/, show(run));
      });

      test("Ctrl-C reaches command", async () => {
        const workspace = makeWorkspace(user);
        // Each marker is split by "" in the source so the echoed command line does not match it.
        const script = 'trap "echo got\"\"-INT" INT; echo RE""ADY; sleep 30; echo after""-sleep; read line; echo "re""ad=$line"';
        const { argv, env } = boxCommand(user, [], ["sh", "-c", script]);
        const quote = (text: string) => `'${text.replace(/'/g, "'\\''")}'`;
        const line = `cd ${quote(workspace)} && env -i ${Object.entries(env).map(([name, value]) => quote(`${name}=${value}`)).join(" ")} ${argv.map(quote).join(" ")}; echo host""-status=$?`;
        const session = `ringfence-${process.pid}-${user.uid}`;
        const tmux = (...args: string[]) => spawnSync("tmux", args, { encoding: "utf8" });
        const screen = () => tmux("capture-pane", "-p", "-t", session).stdout;

        // An interactive shell with job control runs the command, as a user's terminal would.
        assert.equal(tmux("new-session", "-d", "-s", session, "-x", "250", "-y", "50", "bash", "--norc", "--noprofile", "-i").status, 0);
        try {
          tmux("send-keys", "-t", session, "-l", line);
          tmux("send-keys", "-t", session, "Enter");
          assert.ok(await waitFor(() => screen().includes("READY")), screen());
          tmux("send-keys", "-t", session, "C-c");
          assert.ok(await waitFor(() => screen().includes("after-sleep")), screen());
          tmux("send-keys", "-t", session, "typed-line", "Enter");
          assert.ok(await waitFor(() => screen().includes("host-status=")), screen());
          const text = screen();
          assert.match(text, /got-INT/);
          assert.match(text, /read=typed-line/);
          assert.match(text, /host-status=0/);
        } finally {
          tmux("kill-session", "-t", session);
        }
      });

      test("timeout stops box", async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, "version: 1\nresources:\n  timeout: 2s\n");
        const run = await runBox(user, workspace, ["--policy", policy], ["sleep", "60"]);
        assert.equal(run.status, 137, show(run));
        assert.match(run.stderr, /timeout of 2000 ms/);
      });

      test("process limit holds", { skip: skipOn(backend, "process limit holds") }, async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, "version: 1\nresources:\n  processes: 20\n");
        const run = await runBox(user, workspace, ["--policy", policy], ["sh", "-c", "i=0; while [ $i -lt 60 ]; do sleep 3 & i=$((i+1)); done 2>/dev/null; echo spawned; jobs -p | wc -l"]);
        const count = Number(run.stdout.trim().split("\n").pop());
        assert.ok(count < 60, `all 60 processes started:\n${show(run)}`);
        if (await usesCgroups(user, workspace, policy)) assert.match(run.stderr, /reached its process limit \(20\)/, show(run));
      });

      test("fork bomb contained", { skip: skipOn(backend, "fork bomb contained") }, async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, "version: 1\nresources:\n  processes: 100\n  timeout: 60s\n");
        const run = await runBox(user, workspace, ["--policy", policy], ["bash", "-c", "bomb() { bomb | bomb & }; bomb; sleep 3; echo main-finished"]);
        assert.notEqual(run.status, null, show(run));
        if (await usesCgroups(user, workspace, policy)) {
          assert.equal(run.status, 137, show(run));
          assert.match(run.stderr, /looks like a fork bomb/, show(run));
        }
      });

      test("fork bomb under default policy", { skip: skipOn(backend, "fork bomb under default policy") }, async () => {
        // No policy file: the built-in default's process limit must hold the bomb, and the host
        // must keep starting processes while it runs.
        const workspace = makeWorkspace(user);
        const marker = `ringfence-bomb-${process.pid}-${user.uid}`;
        const script = `bomb() { bomb | bomb & }; bomb; exec -a ${marker} sleep 5`;
        let finished = false;
        const running = runBox(user, workspace, [], ["bash", "-c", script]).finally(() => (finished = true));
        let hostStarts = 0;
        let hostFailures = 0;
        while (!finished) {
          const started = await new Promise<boolean>((resolve) => execFile("true", (error) => resolve(error === null)));
          if (started) hostStarts += 1;
          else hostFailures += 1;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const run = await running;

        assert.notEqual(run.status, null, show(run));
        assert.equal(hostFailures, 0, `the host failed to start ${hostFailures} processes during the bomb`);
        assert.ok(hostStarts > 0, "the host started no process during the bomb");
        const left = readdirSync("/proc").filter((name) => /^\d+$/.test(name)).filter((pid) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
          } catch {
            return false;
          }
        });
        assert.deepEqual(left, [], "a process of the bomb survived the run");

        const dryRun = await runBox(user, workspace, ["--dry-run"], []);
        assert.match(dryRun.stdout, /processes 1024/, show(dryRun));
        // The guest applies the process limit in its own cgroup and reports failed forks.
        if (backend === "vm" || /^limits \(cgroup[12]\)/m.test(dryRun.stdout)) {
          assert.equal(run.status, 137, show(run));
          assert.match(run.stderr, /looks like a fork bomb/, show(run));
          assert.match(run.stderr, /reached its process limit \(1024\)/, show(run));
          const runDir = /events in (.*)\/audit\.jsonl/.exec(run.stderr)?.[1];
          assert.ok(runDir !== undefined, show(run));
          const records = readFileSync(join(runDir, "audit.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as { type: string; message?: string; stoppedBy?: string });
          assert.match(records.find((record) => record.type === "limit")?.message ?? "", /process limit \(1024\)/);
          assert.match(records.find((record) => record.type === "run.end")?.stoppedBy ?? "", /fork bomb/);
        }
      });

      test("memory limit stops hog", async () => {
        const workspace = makeWorkspace(user);
        const policy = policyFile(user, "version: 1\nresources:\n  memory: 96MiB\n");
        const run = await runBox(user, workspace, ["--policy", policy], ["node", "-e", "const a=[];for(let i=0;i<2000;i++)a.push(Buffer.alloc(1<<20,1));console.log('ALLOCATED')"]);
        assert.notEqual(run.status, 0, show(run));
        assert.doesNotMatch(run.stdout, /ALLOCATED/);
        if (await usesCgroups(user, workspace, policy)) assert.match(run.stderr, /reached its memory limit/, show(run));
      });
    });
  }
}
