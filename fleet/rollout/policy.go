// Package rollout shapes how a release spreads through the hosts of a
// service: a canary first, then waves, each baked and judged by gates,
// some waiting for a person, none outside the agreed hours. Every host
// computes the same plan from the same records in the fleet, so there is
// no central server: Decide tells one host whether it may start now.
package rollout

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// On failure of a rollout (the breaker trips).
const (
	OnFailureStop   = "stop"   // hosts already updated stay
	OnFailureRevert = "revert" // hosts already updated switch back
)

// CanaryTag is the node tag that puts a host in the canary wave.
const CanaryTag = "canary"

// Policy is a service's rollout block. The same on every host: each host
// records Hash in the fleet, and hosts that disagree stop advancing.
type Policy struct {
	Canary    int           `json:"canary"`
	Waves     []Wave        `json:"waves"`
	Bake      time.Duration `json:"bake"`
	Approve   []string      `json:"approve,omitempty"` // wave names: "canary", "1", "2", …
	MaxFailed int           `json:"max_failed"`
	OnFailure string        `json:"on_failure"`
	Window    *Window       `json:"window,omitempty"`
	Gates     []Gate        `json:"-"`
	// GateSpecs describe the gates for the hash (kind, address, query, for).
	GateSpecs []string `json:"gates,omitempty"`
}

// Wave is one step after the canary: a share of the hosts (cumulative) or
// the hosts with a tag.
type Wave struct {
	Percent int    `json:"percent,omitempty"`
	Tag     string `json:"tag,omitempty"`
}

func (w Wave) String() string {
	if w.Tag != "" {
		return "tag:" + w.Tag
	}
	return strconv.Itoa(w.Percent) + "%"
}

// ParseWave reads "10%" or "tag:eu".
func ParseWave(s string) (Wave, error) {
	if tag, ok := strings.CutPrefix(s, "tag:"); ok {
		if tag == "" || strings.ContainsAny(tag, " ,") {
			return Wave{}, fmt.Errorf("wave %q: a tag wave is \"tag:NAME\"", s)
		}
		return Wave{Tag: tag}, nil
	}
	num, ok := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 1 || n > 100 {
		return Wave{}, fmt.Errorf("wave %q: want a share of the hosts from \"1%%\" to \"100%%\", or \"tag:NAME\"", s)
	}
	return Wave{Percent: n}, nil
}

// WaveName is how operators and the status name wave i (0 is the canary
// when there is one).
func (p *Policy) WaveName(i int) string {
	if p.hasCanary() {
		if i == 0 {
			return "canary"
		}
		return strconv.Itoa(i)
	}
	return strconv.Itoa(i + 1)
}

// PossibleWave says whether name is a wave some rollout could have:
// "canary", or a number from 1 as WaveName writes it.
func PossibleWave(name string) bool {
	n, err := strconv.Atoi(name)
	return name == "canary" || err == nil && n >= 1 && strconv.Itoa(n) == name
}

func (p *Policy) hasCanary() bool { return p.Canary > 0 }

// Validate checks what the decoder cannot: the waves end at every host,
// shares grow, approvals name waves. It returns every problem found, each
// with the key it is about; none (nil) when the policy is sound.
func (p *Policy) Validate() Problems {
	var errs Problems
	if len(p.Waves) == 0 {
		errs = append(errs, problem("waves", `at least one, the last "100%%"`))
	} else if last := p.Waves[len(p.Waves)-1]; last.Percent != 100 {
		errs = append(errs, problem("waves", `the last wave must be "100%%", so that every host is in a wave (it is %q)`, last))
	}
	prev := 0
	for _, w := range p.Waves {
		if w.Tag != "" {
			continue
		}
		if w.Percent <= prev {
			errs = append(errs, problem("waves", "shares are of all hosts and must grow (%d%% after %d%%)", w.Percent, prev))
		}
		prev = w.Percent
	}
	if p.Canary < 0 {
		errs = append(errs, problem("canary", "%d hosts", p.Canary))
	}
	if p.MaxFailed < 1 {
		errs = append(errs, problem("max_failed", "at least 1"))
	}
	switch p.OnFailure {
	case OnFailureStop, OnFailureRevert:
	default:
		errs = append(errs, problem("on_failure", "%q: want %q or %q", p.OnFailure, OnFailureStop, OnFailureRevert))
	}
	names := map[string]bool{}
	for i := 0; i < p.steps(); i++ {
		names[p.WaveName(i)] = true
	}
	for _, a := range p.Approve {
		if !names[a] {
			errs = append(errs, problem("approve", "no wave %q (the waves are %s)", a, strings.Join(p.Names(), ", ")))
		}
	}
	return errs
}

// steps counts the canary and the waves.
func (p *Policy) steps() int {
	if p.hasCanary() {
		return len(p.Waves) + 1
	}
	return len(p.Waves)
}

// Names lists the waves' names in order.
func (p *Policy) Names() []string {
	var out []string
	for i := 0; i < p.steps(); i++ {
		out = append(out, p.WaveName(i))
	}
	return out
}

// Hash identifies the policy: two hosts with the same hash plan alike.
func (p *Policy) Hash() string {
	b, _ := json.Marshal(p)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

func (p *Policy) needsApproval(wave string) bool {
	for _, a := range p.Approve {
		if a == wave {
			return true
		}
	}
	return false
}
