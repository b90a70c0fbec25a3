"""The worker seccomp filter (runtimes/seccomp_filter.py) on the real kernel.

Every check runs in a fresh ``python -I`` (as the runner runs) that builds the filter and
forks; the forked child installs it and runs the check, as a zygote's worker would. The
filter is never installed into the pytest process. Probes call the kernel with arguments
that fail harmlessly if a call gets through (a missing path, a bad fd, a bad magic
number), so an unfiltered run tells the kernel's own answer apart from the filter's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap

import pytest

from runtimes import seccomp_filter
from tests.support import ROOT

try:
    seccomp_filter.build()
    UNAVAILABLE = ""
except seccomp_filter.SeccompUnavailable as exc:
    UNAVAILABLE = str(exc)

pytestmark = pytest.mark.skipif(bool(UNAVAILABLE), reason=f"no seccomp filter: {UNAVAILABLE}")

NODE = shutil.which("node")
UNSHARE = shutil.which("unshare")

# Runs in the fresh interpreter: build, fork, install in the child, run CHECK there.
HARNESS = """
import os, sys, traceback
sys.path.insert(0, {root!r})
from runtimes import seccomp_filter
program = seccomp_filter.build()
pid = os.fork()
if pid == 0:
    status = 1
    try:
        if {filtered!r}:
            seccomp_filter.install(program)
        exec(compile({check!r}, "<check>", "exec"), {{"__name__": "__check__"}})
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
_, wait_status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(wait_status))
"""


def run_in_child(check: str, *, filtered: bool = True, timeout: float = 120,
                 python: tuple[str, ...] = (sys.executable, "-I"),
                 ) -> subprocess.CompletedProcess[str]:
    check = "import os\n" + textwrap.dedent(check)
    script = HARNESS.format(root=str(ROOT), filtered=filtered, check=check)
    # Own session: no controlling terminal for vhangup or anything else to touch.
    return subprocess.run([*python, "-c", script], capture_output=True,
                          text=True, timeout=timeout, start_new_session=True, check=False)


def check_passes(check: str, **kwargs: object) -> str:
    done = run_in_child(check, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


# ---------------------------------------------------------------------------------------
# Denied calls
# ---------------------------------------------------------------------------------------

PROBE_LIB = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
scmp = ctypes.CDLL("libseccomp.so.2")
scmp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
AT_FDCWD = -100
SIGCHLD = 17
NOWHERE = b"/nonexistent-jobgate"

def call(name, *args):
    '''The raw system call: its result, or -errno.'''
    nr = scmp.seccomp_syscall_resolve_name(name.encode())
    assert nr >= 0, f"{name} has no number here"
    ctypes.set_errno(0)
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(nr), *args)
    return -ctypes.get_errno() if result == -1 else result

def clone_probe(flags):
    '''A raw clone(2), as fork: the child leaves at once.'''
    pid = call("clone", flags | SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        return 0
    return pid

def run_isolated(expression):
    '''Each probe in a forked child of its own: one probe's unshare or personality
    change must not change what the next one sees.'''
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            value = eval(expression)
        except BaseException as exc:
            value = repr(exc)
        os.write(w, json.dumps(value).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)
"""

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x80

# Denied call -> a Python expression making it (harmlessly, if it got through).
PROBES: dict[str, str] = {
    **{f"clone {flag}": f"clone_probe({value})" for flag, value in NAMESPACE_FLAGS.items()},
    "clone CLONE_NEWUSER|CLONE_NEWNS": "clone_probe(0x10020000)",
    "clone3": "call('clone3', None, 0)",
    **{f"unshare {flag}": f"call('unshare', {value})"
       for flag, value in {**NAMESPACE_FLAGS, "CLONE_NEWTIME": CLONE_NEWTIME}.items()},
    "unshare CLONE_NEWUSER|CLONE_FS": "call('unshare', 0x10000200)",
    "setns": "call('setns', os.open('/proc/self/ns/uts', os.O_RDONLY), 0)",
    "mount": "call('mount', b'none', NOWHERE, b'tmpfs', 0, None)",
    "umount2": "call('umount2', NOWHERE, 0)",
    "pivot_root": "call('pivot_root', NOWHERE, NOWHERE)",
    "chroot": "call('chroot', NOWHERE)",
    "fsopen": "call('fsopen', b'jobgate-no-such-fs', 0)",
    "fsconfig": "call('fsconfig', -1, 0, None, None, 0)",
    "fsmount": "call('fsmount', -1, 0, 0)",
    "fspick": "call('fspick', AT_FDCWD, NOWHERE, 0)",
    "move_mount": "call('move_mount', AT_FDCWD, NOWHERE, AT_FDCWD, NOWHERE, 0)",
    "open_tree": "call('open_tree', AT_FDCWD, NOWHERE, 0)",
    "mount_setattr": "call('mount_setattr', AT_FDCWD, NOWHERE, 0, None, 0)",
    "ptrace": "call('ptrace', 0, 0, 0, 0)",  # PTRACE_TRACEME
    "process_vm_readv": "call('process_vm_readv', os.getpid(), None, 0, None, 0, 0)",
    "process_vm_writev": "call('process_vm_writev', os.getpid(), None, 0, None, 0, 0)",
    "process_madvise": "call('process_madvise', -1, None, 0, 0, 0)",
    "pidfd_getfd": "call('pidfd_getfd', -1, 0, 0)",
    "kcmp": "call('kcmp', os.getpid(), os.getpid(), 0, 0, 1)",  # KCMP_FILE
    "bpf": "call('bpf', 5, None, 0)",  # BPF_PROG_LOAD without attributes
    "perf_event_open": "call('perf_event_open', None, 0, -1, -1, 0)",
    "userfaultfd": "call('userfaultfd', 0x10)",  # an unknown flag
    "io_uring_setup": "call('io_uring_setup', 0, None)",
    "io_uring_enter": "call('io_uring_enter', -1, 0, 0, 0, None, 0)",
    "io_uring_register": "call('io_uring_register', -1, 0, None, 0)",
    "keyctl": "call('keyctl', 9999, 0, 0, 0, 0)",  # an unknown operation
    "add_key": "call('add_key', None, None, None, 0, 0)",
    "request_key": "call('request_key', None, None, None, 0)",
    "fanotify_init": "call('fanotify_init', 0xFFFFFFFF, 0)",
    "name_to_handle_at": "call('name_to_handle_at', AT_FDCWD, NOWHERE, None, None, 0)",
    "open_by_handle_at": "call('open_by_handle_at', -1, None, 0)",
    "uselib": "call('uselib', NOWHERE)",
    "kexec_load": "call('kexec_load', 0, 1000, None, 0x00FF0000)",  # too many segments
    "kexec_file_load": "call('kexec_file_load', -1, -1, 0, None, 0xFFFFFFF0)",
    "reboot": "call('reboot', 0, 0, 0, None)",  # wrong magic numbers
    "init_module": "call('init_module', None, 0, b'')",
    "finit_module": "call('finit_module', -1, b'', 0)",
    "delete_module": "call('delete_module', b'jobgate_no_such_module', os.O_NONBLOCK)",
    "swapon": "call('swapon', NOWHERE, 0)",
    "swapoff": "call('swapoff', NOWHERE)",
    "acct": "call('acct', NOWHERE + b'/x')",
    "settimeofday": "call('settimeofday', None, None)",  # sets nothing
    "clock_settime": "call('clock_settime', 1, None)",
    "clock_adjtime": "call('clock_adjtime', 0, None)",
    "adjtimex": "call('adjtimex', None)",
    "iopl": "call('iopl', 99)",
    "ioperm": "call('ioperm', 0x10000, 1, 1)",
    "quotactl": "call('quotactl', 0, None, 0, None)",
    "quotactl_fd": "call('quotactl_fd', -1, 0, 0, None)",
    "lookup_dcookie": "call('lookup_dcookie', 0, None, 0)",
    "syslog": "call('syslog', 10, None, 0)",  # SYSLOG_ACTION_SIZE_BUFFER
    "vhangup": "call('vhangup')",  # no controlling terminal: does nothing
    "sethostname": "call('sethostname', b'x', 100000)",  # too long
    "setdomainname": "call('setdomainname', b'x', 100000)",
    "nfsservctl": "call('nfsservctl', 0, None, None)",
}


def expected_errno(probe: str) -> int:
    return errno.ENOSYS if probe == "clone3" else errno.EPERM


def run_probes(filtered: bool) -> dict[str, object]:
    check = PROBE_LIB + (
        f"\nprint(json.dumps({{n: run_isolated(e) for n, e in {PROBES!r}.items()}}))")
    return dict(json.loads(check_passes(check, filtered=filtered)))


@pytest.fixture(scope="module")
def filtered_results() -> dict[str, object]:
    return run_probes(filtered=True)


@pytest.fixture(scope="module")
def unfiltered_results() -> dict[str, object]:
    return run_probes(filtered=False)


@pytest.mark.parametrize("probe", PROBES)
def test_denied_call_fails(probe: str, filtered_results: dict[str, object]) -> None:
    errno_ = expected_errno(probe)
    assert filtered_results[probe] == -errno_, (
        f"{probe} gave {filtered_results[probe]}, not {errno.errorcode[errno_]}")


@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, the kernel refuses most of these itself")
@pytest.mark.parametrize("probe", PROBES)
def test_the_refusal_is_the_filters(probe: str, unfiltered_results: dict[str, object]) -> None:
    """Without the filter the same probe gets another answer, so the one above is the
    filter's, not the kernel's."""
    errno_ = expected_errno(probe)
    if unfiltered_results[probe] == -errno_:
        pytest.skip(f"this kernel itself answers {errno.errorcode[errno_]}: the probe cannot tell")


def test_every_denied_call_is_probed() -> None:
    """Names without a native number here (i386's umount, vm86, stime...) are denied in
    the compat ABI only and cannot be called natively."""
    probe = PROBE_LIB + "print(json.dumps({n: scmp.seccomp_syscall_resolve_name(n.encode())"
    probe += f" for n in {sorted(seccomp_filter.DENIED)!r}}}))"
    numbers = json.loads(check_passes(probe, filtered=False))
    native = {name for name, nr in numbers.items() if nr >= 0}
    assert native - {p.split()[0] for p in PROBES} == set()


I386_LIB = PROBE_LIB + r'''
import mmap

def i386_call(nr, arg):
    """An i386 system call from this 64-bit process (int 0x80): result or -errno."""
    # push rbx; mov eax, nr; mov ebx, edi; int 0x80; pop rbx; ret
    code = b"\x53\xb8" + nr.to_bytes(4, "little") + b"\x89\xfb\xcd\x80\x5b\xc3"
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint)(
        ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return fn(arg)

def x32_call(nr, arg):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(0x40000000 | nr), ctypes.c_long(arg))
    return -ctypes.get_errno() if result == -1 else result
'''


def test_i386_and_x32_system_calls_are_filtered_too() -> None:
    """A 64-bit process can make i386 system calls (int 0x80) and x32 ones (bit 30 set):
    the deny-list covers those ABIs too, not only the native one."""
    if os.uname().machine != "x86_64":
        pytest.skip("x86_64 only")
    if run_in_child(I386_LIB + "assert i386_call(20, 0) == os.getpid()",
                    filtered=False).returncode != 0:
        pytest.skip("no i386 emulation in this kernel")
    out = check_passes(I386_LIB + """
assert i386_call(20, 0) == os.getpid()  # i386 getpid: allowed calls stay allowed
print(json.dumps({"i386 unshare": i386_call(310, 0x10000000),
                  "x32 unshare": x32_call(272, 0x10000000)}))
""")
    assert json.loads(out) == {"i386 unshare": -errno.EPERM, "x32 unshare": -errno.EPERM}


@pytest.mark.skipif(UNSHARE is None, reason="no unshare(1)")
def test_unshare_command_fails() -> None:
    check_passes(f"""
        import subprocess
        done = subprocess.run([{UNSHARE!r}, "-Ur", "true"], capture_output=True, text=True)
        assert done.returncode != 0, "unshare -Ur ran"
        assert "Operation not permitted" in done.stderr, done.stderr
    """)


@pytest.mark.skipif(UNSHARE is None, reason="no unshare(1)")
def test_the_filter_survives_execve() -> None:
    """The child execs unshare(1) directly: the new program still runs filtered."""
    done = run_in_child(f"os.execv({UNSHARE!r}, ['unshare', '-Ur', 'true'])")
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
    out = check_passes("""
        import subprocess, sys
        print(subprocess.run([sys.executable, "-I", "-c",
            "print(open('/proc/self/status').read())"], capture_output=True, text=True).stdout)
    """)
    assert "\nSeccomp:\t2\n" in out and "\nNoNewPrivs:\t1\n" in out


def test_status_shows_the_filter_and_no_new_privs() -> None:
    status = check_passes("print(open('/proc/self/status').read())")
    assert "\nSeccomp:\t2\n" in status
    assert "\nSeccomp_filters:\t1\n" in status
    assert "\nNoNewPrivs:\t1\n" in status


# ---------------------------------------------------------------------------------------
# Ordinary programs keep working
# ---------------------------------------------------------------------------------------

NODE_SCRIPT = r"""
const { execSync } = require("child_process");
const { Worker } = require("worker_threads");
const fs = require("fs");
execSync("true");
const piped = execSync("echo hi | tr a-z A-Z").toString().trim();
fs.readFile("/proc/self/status", "utf8", (err, status) => {
  if (err) throw err;
  const seccomp = status.match(/^Seccomp:\s+(\d)/m)[1];
  const w = new Worker("require('worker_threads').parentPort.postMessage(6 * 7)", { eval: true });
  w.on("message", (m) => console.log(JSON.stringify({ piped, seccomp, worker: m })));
  w.on("error", (e) => { console.error(e); process.exit(3); });
});
"""

ALLOWED: dict[str, str] = {
    "fork and exec": """
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    """,
    "posix_spawn": """
        pid = os.posix_spawn("/bin/true", ["true"], {})
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    """,
    "threads": """
        import threading
        seen = []
        threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(16)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert sorted(seen) == list(range(16))
    """,
    "thread pool": """
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(abs, range(-50, 0))) == list(range(50, 0, -1))
    """,
    "subprocess": """
        import subprocess
        assert subprocess.run(["/bin/true"]).returncode == 0
        out = subprocess.run(["echo", "hello"], capture_output=True, text=True).stdout
        assert out == "hello\\n", out
    """,
    "bash pipeline": """
        import subprocess
        out = subprocess.run(["bash", "-c", "seq 1 1000 | sort -rn | head -3 | tr '\\n' ,"],
                             capture_output=True, text=True, check=True).stdout
        assert out == "1000,999,998,", out
        out = subprocess.run(["bash", "-c", "x=$(echo sub); (echo $x) | cat; wait"],
                             capture_output=True, text=True, check=True).stdout
        assert out == "sub\\n", out
    """,
    "multiprocessing fork": """
        import multiprocessing, operator
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(operator.neg, range(5)) == [0, -1, -2, -3, -4]
    """,
    "multiprocessing spawn": """
        import multiprocessing, operator
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.map(operator.neg, range(5)) == [0, -1, -2, -3, -4]
    """,
    "multiprocessing forkserver": """
        import multiprocessing, operator
        with multiprocessing.get_context("forkserver").Pool(2) as pool:
            assert pool.map(operator.neg, range(5)) == [0, -1, -2, -3, -4]
    """,
    "unshare without namespaces": PROBE_LIB + """
assert call("unshare", 0x400) == 0  # CLONE_FILES
assert call("unshare", 0x200) == 0  # CLONE_FS
""",
    "personality query": PROBE_LIB + """
assert call("personality", 0xFFFFFFFF) >= 0
""",
    "stacking another filter": """
        from runtimes import seccomp_filter
        seccomp_filter.install(seccomp_filter.build())
        assert "\\nSeccomp_filters:\\t2\\n" in open("/proc/self/status").read()
    """,
}


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_programs_work(name: str) -> None:
    check_passes(ALLOWED[name])


@pytest.mark.skipif(NODE is None, reason="no node")
def test_node_child_process_and_worker_threads_work() -> None:
    out = check_passes(f"""
        import json, subprocess
        done = subprocess.run([{NODE!r}, "-e", {NODE_SCRIPT!r}], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        print(done.stdout)
    """)
    assert json.loads(out) == {"piped": "HI", "seccomp": "2", "worker": 42}


# ---------------------------------------------------------------------------------------
# The module itself
# ---------------------------------------------------------------------------------------


def test_build_is_cached_and_whole_instructions() -> None:
    program = seccomp_filter.build()
    assert program is seccomp_filter.build()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096


# The venv's interpreter and the machine's own (which the profiles run).
INTERPRETERS = [sys.executable, *(["/usr/bin/python3"] if os.access("/usr/bin/python3", os.X_OK)
                                  else [])]


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_standard_library_only(interpreter: str) -> None:
    """The runner imports it on a profile's own interpreter: no site-packages (-S)."""
    check_passes("assert os.getpid()", python=(interpreter, "-I", "-S"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop it")
def test_install_after_dropping_root() -> None:
    """The runner installs after setuid to the worker's uid: no privilege needed."""
    out = check_passes(PROBE_LIB + """
from runtimes import seccomp_filter
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
seccomp_filter.install(seccomp_filter.build())
print(json.dumps([call("unshare", 0x10000000), call("clone3", None, 0)]))
""", filtered=False)
    assert json.loads(out) == [-errno.EPERM, -errno.ENOSYS]


def test_install_reports_a_rejected_program_as_oserror() -> None:
    check_passes("""
        import errno
        from runtimes import seccomp_filter
        for program in (b"", b"\\0" * 7, b"\\0" * 8):  # the last one does not end in ret
            try:
                seccomp_filter.install(program)
            except OSError as exc:
                assert exc.errno == errno.EINVAL, exc
            else:
                raise AssertionError(f"{program!r} was installed")
        assert "\\nSeccomp:\\t0\\n" in open("/proc/self/status").read()
    """, filtered=False)


def test_markdown_lists_every_denied_call() -> None:
    table = seccomp_filter.markdown()
    for name in seccomp_filter.DENIED:
        assert f"| `{name}` |" in table
    assert "| ENOSYS |" in table
    assert all(why and "|" not in why for why in seccomp_filter.DENIED.values())


# ---------------------------------------------------------------------------------------
# Costs: measured and reported, not asserted
# ---------------------------------------------------------------------------------------

COSTS = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from runtimes import seccomp_filter
t1 = time.perf_counter()
program = seccomp_filter.build()
t2 = time.perf_counter()
seccomp_filter.build()
t3 = time.perf_counter()

def install_ns():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        start = time.perf_counter_ns()
        seccomp_filter.install(program)
        os.write(w, str(time.perf_counter_ns() - start).encode())
        os._exit(0)
    os.close(w)
    ns = int(os.read(r, 64))
    os.close(r)
    os.waitpid(pid, 0)
    return ns

def getppid_ns(filtered, n=200_000):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        if filtered:
            seccomp_filter.install(program)
        start = time.perf_counter_ns()
        for _ in range(n):
            os.getppid()
        os.write(w, str((time.perf_counter_ns() - start) / n).encode())
        os._exit(0)
    os.close(w)
    ns = float(os.read(r, 64))
    os.close(r)
    os.waitpid(pid, 0)
    return ns

installs = [install_ns() for _ in range(200)]
print(json.dumps({{"import_ms": (t1 - t0) * 1e3, "build_ms": (t2 - t1) * 1e3,
    "cached_build_us": (t3 - t2) * 1e6, "instructions": len(program) // 8,
    "installs_ns": installs, "getppid_ns": getppid_ns(False),
    "getppid_filtered_ns": getppid_ns(True)}}))
"""


def test_costs(record_property: pytest.RecordProperty) -> None:
    done = subprocess.run([sys.executable, "-I", "-c", COSTS.format(root=str(ROOT))],
                          capture_output=True, text=True, timeout=120, check=True)
    costs = json.loads(done.stdout)
    installs = sorted(costs.pop("installs_ns"))
    costs["install_p50_us"] = statistics.median(installs) / 1e3
    costs["install_p90_us"] = installs[int(len(installs) * 0.9)] / 1e3
    costs["install_max_us"] = installs[-1] / 1e3
    for key, value in costs.items():
        record_property(key, value)
    print("\nseccomp costs: " + ", ".join(f"{k}={v:.1f}" for k, v in costs.items()))
