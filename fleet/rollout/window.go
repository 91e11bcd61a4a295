package rollout

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is when new waves may start: days of the week and hours of the
// day in a time zone. Hours may pass midnight ("22:00-02:00"): the window
// then belongs to the day it opens.
type Window struct {
	Days     string `json:"days"`
	Hours    string `json:"hours"`
	Timezone string `json:"timezone"`

	days     [7]bool
	from, to int // minutes after midnight
	loc      *time.Location
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParseWindow reads days ("Mon-Fri", "Mon,Wed,Sat-Sun", "" for every
// day), hours ("09:00-16:00") and a time zone name ("" is UTC). An error
// is a Problem naming the key at fault.
func ParseWindow(days, hours, tz string) (*Window, error) {
	w := &Window{Days: days, Hours: hours, Timezone: tz}
	if strings.TrimSpace(days) == "" {
		w.days = [7]bool{true, true, true, true, true, true, true}
	}
	for _, part := range strings.Split(days, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		a, b, isRange := strings.Cut(part, "-")
		d1, ok1 := dayNames[strings.ToLower(strings.TrimSpace(a))]
		d2, ok2 := d1, ok1
		if isRange {
			d2, ok2 = dayNames[strings.ToLower(strings.TrimSpace(b))]
		}
		if !ok1 || !ok2 {
			return nil, Problem{Key: "days", Msg: fmt.Sprintf("days %q: want names like \"Mon-Fri\" or \"Mon,Wed,Fri\"", days)}
		}
		for d := d1; ; d = (d + 1) % 7 {
			w.days[d] = true
			if d == d2 {
				break
			}
		}
	}
	a, b, ok := strings.Cut(hours, "-")
	var err1, err2 error
	if ok {
		w.from, err1 = clock(a)
		w.to, err2 = clock(b)
	}
	if !ok || err1 != nil || err2 != nil || w.from == w.to {
		return nil, Problem{Key: "hours", Msg: fmt.Sprintf("hours %q: want \"HH:MM-HH:MM\" (like \"09:00-16:00\")", hours)}
	}
	if tz == "" {
		tz = "UTC"
	}
	if strings.EqualFold(tz, "Local") {
		// Each host's own zone: hosts with the same policy would open
		// the window at different times.
		return nil, Problem{Key: "timezone", Msg: fmt.Sprintf("timezone %q: each host's own zone; name one, like \"Europe/Berlin\" or \"UTC\"", tz)}
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, Problem{Key: "timezone", Msg: fmt.Sprintf("timezone %q: %v", tz, err)}
	}
	w.loc = loc
	return w, nil
}

func clock(s string) (int, error) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || hh < 0 || hh > 24 || mm < 0 || mm > 59 || hh*60+mm > 24*60 {
		return 0, fmt.Errorf("bad time %q", s)
	}
	return hh*60 + mm, nil
}

func (w *Window) String() string {
	return fmt.Sprintf("%s %s %s", w.Days, w.Hours, w.loc)
}

// Open says whether t is inside the window and when that changes: the
// close when open, the next opening when closed.
func (w *Window) Open(t time.Time) (bool, time.Time) {
	t = t.In(w.loc)
	open, closes := w.openAt(t)
	if open {
		return true, closes
	}
	// The next opening: today's or one of the next seven days'.
	for i := 0; i <= 7; i++ {
		day := time.Date(t.Year(), t.Month(), t.Day()+i, 0, 0, 0, 0, w.loc)
		start := w.at(day, w.from)
		if w.days[day.Weekday()] && start.After(t) {
			return false, start
		}
	}
	return false, time.Time{} // no day at all: never
}

// openAt reports whether t (in the window's zone) is in the window opened
// today or, for windows passing midnight, yesterday.
func (w *Window) openAt(t time.Time) (bool, time.Time) {
	for _, back := range []int{0, 1} {
		day := time.Date(t.Year(), t.Month(), t.Day()-back, 0, 0, 0, 0, w.loc)
		if !w.days[day.Weekday()] {
			continue
		}
		start, end := w.at(day, w.from), w.at(day, w.to)
		if w.to < w.from {
			end = w.at(day.AddDate(0, 0, 1), w.to)
		}
		if !t.Before(start) && t.Before(end) {
			return true, end
		}
	}
	return false, time.Time{}
}

// at is the wall-clock time min minutes into day, in the window's zone
// (not day plus a duration: days of a clock change are 23 or 25 hours).
func (w *Window) at(day time.Time, min int) time.Time {
	return time.Date(day.Year(), day.Month(), day.Day(), min/60, min%60, 0, 0, w.loc)
}
