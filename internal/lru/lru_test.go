package lru

import (
	"fmt"
	"sync"
	"testing"
)

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	c := New[int, string](2)
	c.Put(1, "a")
	c.Put(2, "b")
	if _, ok := c.Get(1); !ok { // 1 is now the most recent
		t.Fatal("1 missing")
	}
	c.Put(3, "c") // evicts 2
	if _, ok := c.Get(2); ok {
		t.Error("2 should have been evicted")
	}
	for k, want := range map[int]string{1: "a", 3: "c"} {
		if v, ok := c.Get(k); !ok || v != want {
			t.Errorf("Get(%d) = %q, %v; want %q", k, v, ok, want)
		}
	}
	c.Put(1, "A") // replace keeps the size
	if v, _ := c.Get(1); v != "A" || c.Len() != 2 {
		t.Errorf("after replace: Get(1) = %q, Len = %d", v, c.Len())
	}
}

func TestConcurrent(t *testing.T) {
	c := New[string, int](64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := fmt.Sprint((g*7 + i) % 100)
				c.Put(k, i)
				c.Get(k)
			}
		}()
	}
	wg.Wait()
	if c.Len() > 64 {
		t.Errorf("Len = %d, over the bound 64", c.Len())
	}
}

func ExampleCache() {
	c := New[string, int](2)
	c.Put("a", 1)
	c.Put("b", 2)
	c.Get("a")
	c.Put("c", 3) // "b" was used least recently
	_, okB := c.Get("b")
	a, _ := c.Get("a")
	fmt.Println(a, okB, c.Len())
	// Output: 1 false 2
}

func TestWeighted(t *testing.T) {
	c := NewWeighted(10, func(k string, v []byte) int { return len(k) + len(v) })
	c.Put("a", make([]byte, 4)) // 5
	c.Put("b", make([]byte, 4)) // 10
	c.Get("a")
	c.Put("c", make([]byte, 2)) // 13: evicts b, the least recently used
	if _, ok := c.Get("b"); ok || c.Len() != 2 || c.Weight() != 8 {
		t.Fatalf("after overflow: b kept %v, Len %d, Weight %d", ok, c.Len(), c.Weight())
	}
	c.Put("a", make([]byte, 1)) // replace: 2 + 3
	if c.Weight() != 5 {
		t.Fatalf("after replace: Weight %d, want 5", c.Weight())
	}
	c.Put("huge", make([]byte, 100)) // heavier than the cache: kept alone
	if v, ok := c.Get("huge"); !ok || len(v) != 100 || c.Len() != 1 || c.Weight() != 104 {
		t.Fatalf("heavy entry: kept %v, Len %d, Weight %d", ok, c.Len(), c.Weight())
	}
	c.Put("d", nil) // the heavy one goes as soon as anything else comes
	if _, ok := c.Get("huge"); ok || c.Len() != 1 || c.Weight() != 1 {
		t.Fatalf("after heavy: kept %v, Len %d, Weight %d", ok, c.Len(), c.Weight())
	}
}
