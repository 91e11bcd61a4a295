package agent

import (
	"fmt"
	"os/user"
	"strconv"
)

// lookupID resolves a user or group name (or number) to its id.
func lookupID(name string, isUser bool) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	if isUser {
		u, err := user.Lookup(name)
		if err != nil {
			return -1, fmt.Errorf("owner %q: %v", name, err)
		}
		return strconv.Atoi(u.Uid)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("group %q: %v", name, err)
	}
	return strconv.Atoi(g.Gid)
}
