// syscall-probe makes one raw system call per name given, with arguments that make it
// fail harmlessly (or succeed doing nothing) when nothing filters it, and prints
// "<name> <errno>" (0: it succeeded) for each. tests/privilege.rs runs it in a container
// with wharf's default seccomp profile and again unconfined: a call the profile denies
// answers EPERM (ENOSYS for clone3) there and something else unconfined, which shows
// the filter, not a missing capability, refused it. Static (CGO_ENABLED=0), so it runs
// in any image.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A call: its number and six arguments (amd64).
type call struct {
	nr   uintptr
	args [6]uintptr
}

// badFD is -1 as a syscall argument.
const badFD = ^uintptr(0)

var calls = map[string]call{
	// (cmd KEYCTL_GET_KEYRING_ID of key 0: no such key)
	"keyctl":          {unix.SYS_KEYCTL, [6]uintptr{0, 0, 0}},
	"add_key":         {unix.SYS_ADD_KEY, [6]uintptr{}},
	"request_key":     {unix.SYS_REQUEST_KEY, [6]uintptr{}},
	"perf_event_open": {unix.SYS_PERF_EVENT_OPEN, [6]uintptr{0, 0, badFD, badFD, 0}},
	// (MPOL_DEFAULT with no nodes; no pages)
	"set_mempolicy": {unix.SYS_SET_MEMPOLICY, [6]uintptr{}},
	"mbind":         {unix.SYS_MBIND, [6]uintptr{}},
	"move_pages":    {unix.SYS_MOVE_PAGES, [6]uintptr{}},
	// (UFFD_USER_MODE_ONLY: allowed to anyone since 5.11)
	"userfaultfd":       {unix.SYS_USERFAULTFD, [6]uintptr{1}},
	"uselib":            {unix.SYS_USELIB, [6]uintptr{}},
	"name_to_handle_at": {unix.SYS_NAME_TO_HANDLE_AT, [6]uintptr{badFD}},
	"kcmp":              {unix.SYS_KCMP, [6]uintptr{}},
	"process_vm_readv":  {unix.SYS_PROCESS_VM_READV, [6]uintptr{}},
	"process_vm_writev": {unix.SYS_PROCESS_VM_WRITEV, [6]uintptr{}},
	// (no flags: a no-op)
	"unshare":        {unix.SYS_UNSHARE, [6]uintptr{}},
	"setns":          {unix.SYS_SETNS, [6]uintptr{badFD}},
	"clock_adjtime":  {unix.SYS_CLOCK_ADJTIME, [6]uintptr{}},
	"sysfs":          {unix.SYS_SYSFS, [6]uintptr{}},
	"ustat":          {unix.SYS_USTAT, [6]uintptr{}},
	"quotactl":       {unix.SYS_QUOTACTL, [6]uintptr{}},
	"io_uring_setup": {unix.SYS_IO_URING_SETUP, [6]uintptr{}},
	"open_tree":      {unix.SYS_OPEN_TREE, [6]uintptr{badFD}},
	"clone3":         {unix.SYS_CLONE3, [6]uintptr{}},
	"get_mempolicy":  {unix.SYS_GET_MEMPOLICY, [6]uintptr{}},
	// Allowed by the profile, for contrast: each answers the same either way.
	"getpid": {unix.SYS_GETPID, [6]uintptr{}},
	"uname":  {unix.SYS_UNAME, [6]uintptr{}},
}

func main() {
	status := 0
	for _, name := range os.Args[1:] {
		c, ok := calls[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "syscall-probe: no call named %q\n", name)
			status = 2
			continue
		}
		_, _, errno := unix.RawSyscall6(c.nr, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4], c.args[5])
		fmt.Printf("%s %d\n", name, int(errno))
	}
	os.Exit(status)
}
