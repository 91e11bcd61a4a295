package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// stateVersion is bumped when State changes incompatibly.
const stateVersion = 1

// maxHistory bounds the attempts kept in State.History.
const maxHistory = 50

// State is what a service has installed and tried, kept in
// <state_path>/<service>/state.json so a restart redeploys nothing.
type State struct {
	Version   int    `json:"version"`
	Service   string `json:"service"`
	Checksum  string `json:"checksum,omitempty"` // installed and current
	SHA256    string `json:"sha256,omitempty"`   // of the bytes installed
	VersionID string `json:"version_id,omitempty"`
	Release   string `json:"release,omitempty"`
	// RolledBackFrom is a checksum an operator or a failed check rolled
	// back from: it is not installed again until another one is published.
	RolledBackFrom string              `json:"rolled_back_from,omitempty"`
	Failures       map[string]*Failure `json:"failures,omitempty"` // by checksum
	Releases       []Release           `json:"releases,omitempty"` // oldest first
	History        []Attempt           `json:"history,omitempty"`  // newest last
	// LastCheck is the last check that wrote the state: one that installed,
	// failed or changed LastError. Checks that find nothing new do not
	// write; the status endpoint has the time of the latest.
	LastCheck time.Time `json:"last_check,omitzero"`
	LastError string    `json:"last_error,omitempty"`
	// NewestSigned is the newest signing time of any release ever
	// installed here, with that release's digest: a release signed
	// before it is a replay, even after a rollback made an older one
	// current.
	NewestSigned *NewestSigned `json:"newest_signed,omitempty"`
	// SwitchBack is a switch back to a kept release under way: saved
	// before the destination changes and cleared by the save that
	// records the switch, so a crash in between is completed at the next
	// start, not undone (see Runner.resume).
	SwitchBack *SwitchBack `json:"switch_back,omitempty"`
}

// SwitchBack is the intent of an operator's rollback, a pin or a fleet
// revert: the release to make current and the one left.
type SwitchBack struct {
	Target       Release   `json:"target"`
	From         string    `json:"from,omitempty"` // the release left, by id
	FromChecksum string    `json:"from_checksum,omitempty"`
	Reason       string    `json:"reason"`        // operator, pin or revert
	Why          string    `json:"why,omitempty"` // a pin's words
	Time         time.Time `json:"time"`
}

// NewestSigned is the replay rule's high-water mark.
type NewestSigned struct {
	Time   time.Time `json:"time"`
	SHA256 string    `json:"sha256,omitempty"`
	KeyID  string    `json:"key_id,omitempty"`
}

// signedMark raises the high-water mark to rel's signing time.
func (s *State) signedMark(rel Release) {
	if rel.Signed == nil || rel.Signed.Time.IsZero() {
		return
	}
	if n := s.NewestSigned; n == nil || !rel.Signed.Time.Before(n.Time) {
		s.NewestSigned = &NewestSigned{Time: rel.Signed.Time, SHA256: rel.SHA256, KeyID: rel.Signed.KeyID}
	}
}

// Release is one unpacked release kept on disk.
type Release struct {
	ID       string `json:"id"`
	Checksum string `json:"checksum"`
	// MD5 and SHA256 are the digests computed over the bytes installed,
	// whatever the store reported.
	MD5       string    `json:"md5,omitempty"`
	SHA256    string    `json:"sha256,omitempty"`
	VersionID string    `json:"version_id,omitempty"`
	Source    string    `json:"source"`
	Installed time.Time `json:"installed"`
	// Signed is who signed it, when signatures are required.
	Signed *Signed `json:"signed,omitempty"`
}

// Signed is what a release's verified signature said.
type Signed struct {
	KeyID     string    `json:"key_id"`
	Time      time.Time `json:"time,omitzero"`
	Version   string    `json:"version,omitempty"`
	Publisher string    `json:"publisher,omitempty"`
}

// Failure counts the failed attempts of one checksum.
type Failure struct {
	Count int       `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	Phase string    `json:"phase"`
	Error string    `json:"error"`
}

// Attempt is one update, successful or not.
type Attempt struct {
	Time     time.Time     `json:"time"`
	Checksum string        `json:"checksum"`
	Release  string        `json:"release,omitempty"`
	Result   string        `json:"result"` // success, failure, rollback
	Phase    string        `json:"phase,omitempty"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// installed makes rel the current release: a successful update.
func (s *State) installed(rel Release, a Attempt) {
	s.Checksum, s.SHA256, s.VersionID, s.Release = rel.Checksum, rel.SHA256, rel.VersionID, rel.ID
	if s.RolledBackFrom != "" && s.RolledBackFrom != rel.Checksum {
		s.RolledBackFrom = ""
	}
	delete(s.Failures, rel.Checksum)
	s.Releases = append(s.Releases, rel)
	s.signedMark(rel)
	s.record(a)
}

// failed counts a failed attempt at checksum; the count decides the
// back-off before the next try.
func (s *State) failed(a Attempt, now time.Time) *Failure {
	if s.Failures == nil {
		s.Failures = map[string]*Failure{}
	}
	f := s.Failures[a.Checksum]
	if f == nil {
		f = &Failure{First: now}
		s.Failures[a.Checksum] = f
	}
	f.Count++
	f.Last, f.Phase, f.Error = now, a.Phase, a.Error
	s.record(a)
	return f
}

// rolledBack makes the kept release rel current again; from is the
// checksum left, not installed again until another one is published.
func (s *State) rolledBack(rel Release, from string, a Attempt) {
	if from != "" && from != rel.Checksum {
		s.RolledBackFrom = from
	}
	s.Checksum, s.SHA256, s.VersionID, s.Release = rel.Checksum, rel.SHA256, rel.VersionID, rel.ID
	s.record(a)
}

// reverted makes the kept release rel current again because the fleet
// refused the checksum left. Unlike an operator's rollback it does not
// refuse that checksum here: the fleet's breaker does, and once it is
// cleared the host may take it again.
func (s *State) reverted(rel Release, a Attempt) {
	s.Checksum, s.SHA256, s.VersionID, s.Release = rel.Checksum, rel.SHA256, rel.VersionID, rel.ID
	s.record(a)
}

// trim keeps the newest keep releases, and always the current one and
// the one destination points at (cur); the directories of the others are
// removed by layout.sweep once the state is saved.
func (s *State) trim(keep int, cur string) {
	if len(s.Releases) <= keep {
		return
	}
	var kept []Release
	drop := len(s.Releases) - keep
	for i, r := range s.Releases {
		if i < drop && r.ID != cur && r.ID != s.Release {
			continue
		}
		kept = append(kept, r)
	}
	s.Releases = kept
}

func (s *State) record(a Attempt) {
	s.History = append(s.History, a)
	if over := len(s.History) - maxHistory; over > 0 {
		s.History = append([]Attempt(nil), s.History[over:]...)
	}
}

func (s *State) release(id string) (Release, bool) {
	for _, r := range s.Releases {
		if r.ID == id {
			return r, true
		}
	}
	return Release{}, false
}

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// LoadState reads the state of a service directory; a missing file is a
// service never installed.
func LoadState(dir, service string) (*State, error) {
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Version: stateVersion, Service: service}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read state %s: %w (move it away to start this service afresh)", statePath(dir), err)
	}
	if s.Version > stateVersion {
		return nil, fmt.Errorf("read state %s: version %d is newer than this dropship understands (%d)", statePath(dir), s.Version, stateVersion)
	}
	s.Version, s.Service = stateVersion, service
	if s.NewestSigned == nil {
		// A state written before the mark was kept: the newest of the
		// releases it still lists.
		for _, r := range s.Releases {
			s.signedMark(r)
		}
	}
	return &s, nil
}

// Save writes the state atomically: a temporary file, fsync, rename over
// the old one, fsync of the directory. A crash leaves the old or the new
// state, never a mix. The file may hold hook output (last_error), so only
// root and the agent's group read it.
func (s *State) Save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(statePath(dir), append(b, '\n'), stateFileMode)
}

// Modes of a service's state directory and state file. The directory
// stays traversable by others (--x): the destination link leads through
// it to the release, which the service's own user must reach; it cannot
// be listed, and the state file cannot be read.
const (
	stateDirMode  = 0o751
	stateFileMode = 0o640
)

func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, stateDirMode); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
