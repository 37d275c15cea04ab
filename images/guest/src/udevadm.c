// SPDX-License-Identifier: GPL-2.0
/*
 * bpfpm: stands in for udevadm, and for systemd-udevd (a link to it), in
 * the guest; see guest_stubs() in bpfpm/vm.py.
 *
 * virtme-ng-init starts udevd, triggers a coldplug of subsystems, then of
 * devices, and waits for udev to settle. For a guest whose devices are all
 * built in, what the init needs of that is the names of its virtio-serial
 * ports under /dev/virtio-ports/ (the --exec script's stdin, stdout,
 * stderr and exit code). "udevadm trigger" makes those links; every other
 * call does nothing.
 *
 * Written in C, not sh: the init runs it four times, and under TCG each sh
 * with its mkdir and ln children costs about 0.15 s of a boot that should
 * take a few seconds. Built static by bpfpm.vm (no dynamic loader either).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PORTS_SYS "/sys/class/virtio-ports"
#define PORTS_DEV "/dev/virtio-ports"

static int link_port(const char *port)
{
	char path[512], name[256], target[300], link[512];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), PORTS_SYS "/%s/name", port);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(name, 1, sizeof(name) - 1, f);
	fclose(f);
	while (n && (name[n - 1] == '\n' || name[n - 1] == '\0'))
		n--;
	if (!n)
		return 0;
	name[n] = '\0';
	if (strchr(name, '/'))
		return 0;
	snprintf(target, sizeof(target), "../%s", port);
	snprintf(link, sizeof(link), PORTS_DEV "/%s", name);
	unlink(link);
	if (symlink(target, link)) {
		fprintf(stderr, "udevadm (bpfpm): %s -> %s: %s\n", link, target,
			strerror(errno));
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct dirent *d;
	DIR *dir;
	int err = 0;

	/* the init triggers twice (subsystems, then devices): link once */
	if (argc < 2 || strcmp(argv[1], "trigger") ||
	    (argc > 2 && !strcmp(argv[2], "--type=subsystems")))
		return 0;
	if (mkdir(PORTS_DEV, 0755) && errno != EEXIST)
		return 1;
	dir = opendir(PORTS_SYS);
	if (!dir)
		return 0;
	while ((d = readdir(dir)))
		if (d->d_name[0] != '.')
			err |= link_port(d->d_name);
	closedir(dir);
	return err;
}
