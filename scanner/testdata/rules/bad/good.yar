rule fine { condition: true }
