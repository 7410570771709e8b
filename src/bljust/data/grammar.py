"""The ``commands`` text domain: what people say to a voice assistant, from a small grammar.

Deployed recognisers mostly serve narrow domains, where the words and phrasings of the test set
are those of the training text; Austen's prose is the opposite. This grammar covers the usual
assistant intents (alarms, timers, reminders, calendar, calls, messages, music, weather, smart
home, shopping lists, navigation, arithmetic and unit conversions) with their slots filled from
word lists, numbers always spelled out ("Set an alarm for seven thirty a.m.").

Like :func:`bljust.data.text.austen_sentences`, :func:`command_sentences` returns *engine input*
(natural casing and punctuation; "a.m." and "T.V." are read as letters by espeak-ng, flite and
festival alike, where "AM" or "TV" are not), and :func:`bljust.data.text.normalize_transcript`
gives the transcript ("SET AN ALARM FOR SEVEN THIRTY A M"). Transcripts are unique, so split
sentence pools drawn from the list are disjoint in what is said, not only in how it is written.
The list is a deterministic function of the seed; a shorter list is a prefix of a longer one.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, TypeVar

import numpy as np

from bljust.data.text import normalize_transcript

# Enough for ~30 h of audio at ~2.5 s a command before a split pool runs out; the grammar can
# make far more (the smallest intents repeat and are drawn again, which costs little).
COMMAND_SENTENCES = 40000
T = TypeVar("T")
MIN_WORDS = 3

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL_ONES = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                 "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """0..999 in words, as spoken in American English ("one hundred twenty five")."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words covers 0..999, not {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")


def ordinal_words(n: int) -> str:
    """1..999 as an ordinal in words ("twenty first", "thirtieth")."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL_ONES:
        last = _ORDINAL_ONES[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join(words[:-1] + [last])


# ---------------------------------------------------------------------------------------------
# word lists

FIRST_NAMES = ("Anna", "Ben", "Carlos", "Diana", "Emma", "Frank", "Grace", "Henry", "Isabel", "Jack", "Karen",
               "Liam", "Maria", "Nathan", "Olivia", "Peter", "Rachel", "Sam", "Sarah", "Tom", "Victor", "Wendy",
               "Zoe", "Alex", "Chris", "David", "Ellen", "George", "Hannah", "James", "Julia", "Kevin", "Laura",
               "Michael", "Nina", "Oscar", "Paul", "Rosa", "Steve", "Tina", "Lucy", "Mark", "Amy", "Daniel",
               "Sophie", "Ryan", "Megan", "Eric", "Helen", "Jason", "Lisa", "Brian", "Kate", "Tony", "Rita")
SURNAMES = ("Smith", "Johnson", "Brown", "Lee", "Garcia", "Miller", "Davis", "Wilson", "Taylor", "Clark",
            "Lewis", "Walker", "Young", "King", "Wright", "Lopez", "Hill", "Green", "Baker", "Nelson", "Carter",
            "Mitchell", "Roberts", "Turner", "Phillips", "Campbell", "Parker", "Evans", "Edwards", "Collins",
            "Patel", "Nguyen", "Kim", "Murphy", "Cooper")
RELATIONS = ("Mom", "Dad", "Grandma", "Grandpa", "my wife", "my husband", "my sister", "my brother", "my son",
             "my daughter", "my boss", "the office", "Aunt Julia", "Uncle Tom", "the babysitter", "the school")
CITIES = ("Chicago", "Boston", "Seattle", "Denver", "Dallas", "Houston", "Phoenix", "Atlanta", "Miami",
          "Portland", "San Francisco", "Los Angeles", "New York", "Las Vegas", "San Diego", "Saint Louis",
          "Nashville", "Austin", "Detroit", "Minneapolis", "Philadelphia", "Pittsburgh", "Cleveland",
          "Baltimore", "New Orleans", "Salt Lake City", "Kansas City", "Orlando", "Honolulu", "Anchorage",
          "London", "Paris", "Tokyo", "Sydney", "Toronto", "Dublin", "Berlin", "Madrid", "Rome", "Vienna",
          "Amsterdam", "Edinburgh", "Manchester", "Glasgow", "Vancouver", "Montreal", "Melbourne", "Auckland",
          "Cape Town", "Mexico City", "Buenos Aires", "Lisbon", "Prague", "Oslo", "Stockholm", "Copenhagen",
          "Brussels", "Athens", "Cairo", "Mumbai", "Singapore", "Hong Kong", "Seoul", "Bangkok", "Chennai")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
HOLIDAYS = ("Christmas", "New Year's Eve", "Halloween", "Thanksgiving", "Easter", "Valentine's Day",
            "Mother's Day", "Father's Day", "my birthday", "summer vacation", "the long weekend")
ROOMS = ("kitchen", "living room", "bedroom", "master bedroom", "bathroom", "office", "garage", "hallway",
         "dining room", "basement", "kids' room", "guest room", "nursery", "porch", "laundry room", "den",
         "study", "upstairs bathroom", "family room", "attic")
DEVICES = ("lights", "lamp", "ceiling fan", "T.V.", "air conditioner", "heater", "space heater", "fan",
           "speaker", "night light", "humidifier", "air purifier", "fireplace", "floor lamp", "reading light",
           "desk lamp", "radio", "heated floor", "string lights", "ceiling light")
APPLIANCES = ("dishwasher", "washing machine", "dryer", "robot vacuum", "coffee maker", "oven", "kettle",
              "sprinklers", "slow cooker", "rice cooker")
DOORS = ("front door", "back door", "garage door", "side door", "patio door", "basement door")
COLOURS = ("warm white", "cool white", "blue", "red", "green", "purple", "orange", "soft yellow", "pink",
           "daylight")
FOODS = ("pasta", "eggs", "rice", "pizza", "cookies", "chicken", "potatoes", "bread", "tea", "laundry",
         "turkey", "soup", "cake", "brownies", "steak", "fish", "vegetables", "noodles")
SHOPPING = ("milk", "eggs", "bread", "butter", "bananas", "apples", "coffee", "paper towels", "dish soap",
            "orange juice", "chicken", "rice", "pasta", "tomatoes", "onions", "cheese", "yogurt", "cereal",
            "batteries", "toothpaste", "dog food", "cat litter", "olive oil", "flour", "sugar", "lemons",
            "spinach", "carrots", "potatoes", "garlic", "peanut butter", "ice cream", "trash bags",
            "light bulbs", "shampoo", "coffee filters", "avocados", "strawberries", "tortillas", "salsa")
GENRES = ("jazz", "classical music", "rock music", "country music", "hip hop", "the blues", "reggae",
          "lo fi beats", "eighties pop", "nineties rock", "relaxing piano music", "rain sounds", "white noise",
          "folk music", "soul music", "disco", "smooth jazz", "ocean sounds", "Christmas music",
          "dance music", "acoustic guitar music", "opera", "a lullaby", "punk rock", "gospel music")
ARTISTS = ("the Beatles", "Taylor Swift", "Miles Davis", "Bob Marley", "Elton John", "Johnny Cash", "Adele",
           "Queen", "Fleetwood Mac", "Frank Sinatra", "Nina Simone", "Ed Sheeran", "Stevie Wonder",
           "Dolly Parton", "Bruce Springsteen", "Norah Jones", "Coldplay", "the Rolling Stones", "Bob Dylan",
           "Aretha Franklin", "Louis Armstrong", "Billie Holiday", "David Bowie", "Ella Fitzgerald",
           "Willie Nelson", "Pink Floyd", "Bruno Mars", "Whitney Houston", "Ray Charles", "the Eagles")
PLAYLISTS = ("workout", "morning", "road trip", "dinner party", "focus", "sleep", "running", "cooking",
             "summer", "chill", "party", "study", "Sunday morning", "favorites")
MESSAGES = ("I'm running late", "I'll be home in twenty minutes", "call me when you get this",
            "happy birthday", "I'm on my way", "don't forget the milk", "can you pick up the kids",
            "dinner is ready", "do you need anything from the store", "thanks for today", "good night",
            "I love you", "where are you", "I'm stuck in traffic", "the meeting is cancelled",
            "I'll call you back later", "see you soon", "can we talk tonight", "I left my keys at home",
            "let me know when you land", "the package arrived", "I'm leaving work now",
            "please feed the dog", "are we still on for lunch", "congratulations", "I'm outside",
            "save me a seat", "I'll be there in five minutes", "can you call me", "what time is dinner")
TASKS = ("call the dentist", "take out the trash", "pick up the dry cleaning", "water the plants",
         "pay the electric bill", "take my medicine", "buy milk", "feed the cat", "walk the dog",
         "check the oven", "move the car", "charge my phone", "renew my passport", "pay the rent",
         "book a table for dinner", "return the library books", "change the air filter", "call the bank",
         "pick up the prescription", "submit my timesheet", "stretch", "drink some water", "leave for the airport",
         "put the laundry in the dryer", "lock the back door", "bring the umbrella", "order more coffee",
         "check the mail", "schedule an oil change", "defrost the chicken", "start the dishwasher",
         "turn off the sprinklers", "get gas", "back up my laptop", "buy a birthday present")
EVENTS = ("a dentist appointment", "a doctor's appointment", "soccer practice", "yoga class", "a haircut",
          "the team meeting", "a parent teacher conference", "piano lessons", "book club", "the budget review",
          "a job interview", "the school play", "date night", "a vet appointment", "movie night",
          "swimming lessons", "a conference call", "the fire drill", "band practice", "a flu shot")
PLACES = ("the nearest gas station", "the airport", "work", "home", "the closest pharmacy", "the grocery store",
          "the train station", "the nearest coffee shop", "the hospital", "the mall", "the post office",
          "the library", "the nearest hardware store", "the beach", "the zoo", "downtown", "the gym",
          "the nearest charging station", "the closest bank", "the park")
STREETS = ("Main Street", "Oak Street", "Park Avenue", "Elm Street", "Maple Avenue", "Pine Street",
           "Washington Street", "Lake Road", "Hill Street", "River Road", "Church Street", "Market Street",
           "Second Avenue", "Fifth Avenue", "Sunset Boulevard", "Cedar Lane")
BUSINESSES = ("pizza place", "Thai restaurant", "hardware store", "pharmacy", "coffee shop", "bakery",
              "flower shop", "dry cleaner", "bike shop", "vet", "urgent care", "taxi company")
PACKAGED = ("cans of soup", "bottles of water", "bags of chips", "boxes of cereal", "rolls of tape", "packs of gum",
            "cartons of eggs", "loaves of bread")
CONVERSIONS = (("miles", "kilometers"), ("kilometers", "miles"), ("pounds", "kilograms"),
               ("kilograms", "pounds"), ("ounces", "grams"), ("cups", "milliliters"), ("inches", "centimeters"),
               ("feet", "meters"), ("gallons", "liters"), ("teaspoons", "tablespoons"), ("quarts", "cups"),
               ("degrees Fahrenheit", "Celsius"), ("degrees Celsius", "Fahrenheit"), ("hours", "minutes"),
               ("yards", "meters"))


# ---------------------------------------------------------------------------------------------
# slots

# Part of the day -> the clock hours (1..12) it can follow.
_DAY_PARTS = {"in the morning": range(5, 12), "in the afternoon": (12, 1, 2, 3, 4, 5),
              "in the evening": range(5, 10), "at night": (8, 9, 10, 11, 12, 1, 2, 3)}


class _Picker:
    """Draws from word lists with one seeded generator, so a sentence list is a function of the seed."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def between(self, lo: int, hi: int) -> int:
        """An integer in lo..hi, both included."""
        return int(self.rng.integers(lo, hi + 1))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def contact(self) -> str:
        kind = self.between(0, 9)
        if kind < 4:
            return self(FIRST_NAMES)
        if kind < 6:
            return f"{self(FIRST_NAMES)} {self(SURNAMES)}"
        if kind < 9:
            return self(RELATIONS)
        return f"Doctor {self(SURNAMES)}"

    def clock(self, hour: int | None = None) -> str:
        """A clock time without a.m./p.m.: "seven", "seven thirty", "seven oh five", "half past seven"."""
        h = number_words(self.between(1, 12) if hour is None else hour)
        kind = self.between(0, 11)
        if kind < 2:
            return h if kind == 0 else f"{h} o'clock"
        if kind == 2:
            return self(("quarter past ", "half past ", "quarter to ", "ten past ", "twenty to ")) + h
        minute = self((15, 30, 45, 10, 20, 40, 50)) if kind < 8 else self.between(1, 59)
        return f"{h} oh {_ONES[minute]}" if minute < 10 else f"{h} {number_words(minute)}"

    def time(self) -> str:
        """A clock time, usually with its part of the day ("seven thirty a.m.", "noon")."""
        kind = self.between(0, 19)
        if kind == 0:
            return self(("noon", "midnight"))
        hour = self.between(1, 12)
        # Only the parts of the day an hour can be in: no "eleven in the afternoon".
        suffix = self(("a.m.", "p.m.", "", *(part for part, hours in _DAY_PARTS.items() if hour in hours)))
        return f"{self.clock(hour)} {suffix}".strip()

    def day(self) -> str:
        """When, as a day: "tomorrow", "on Friday", "next Tuesday", "on March third"."""
        kind = self.between(0, 9)
        if kind < 3:
            return self(("today", "tomorrow", "tonight", "this weekend", "tomorrow morning", "this evening",
                         "the day after tomorrow", "tomorrow night", "this afternoon"))
        if kind < 6:
            return f"{self(('on ', 'next ', 'this ', 'every '))}{self(WEEKDAYS)}"
        if kind < 8:
            return f"on {self.date()}"
        return self(("on weekdays", "every day", "every morning", "on weekends", "next week"))

    def date(self) -> str:
        """A calendar date: "March third", "the twenty first", "Friday the ninth"."""
        kind = self.between(0, 5)
        if kind < 4:
            month = self.between(0, 11)
            return f"{MONTHS[month]} {ordinal_words(self.between(1, _MONTH_DAYS[month]))}"
        day = ordinal_words(self.between(1, 31))
        return f"the {day}" if kind == 4 else f"{self(WEEKDAYS)} the {day}"

    def duration(self) -> str:
        """A span: "ten minutes", "an hour and a half", "two hours and fifteen minutes", "ninety seconds"."""
        kind = self.between(0, 11)
        if kind < 5:
            n = self.between(1, 60) if kind < 4 else self.between(61, 120)
            return "one minute" if n == 1 else f"{number_words(n)} minutes"
        if kind < 7:
            n = self.between(5, 90) if kind == 5 else self.between(91, 300)
            return f"{number_words(n)} seconds"
        if kind == 7:
            return self(("an hour", "half an hour", "an hour and a half", "a minute and a half",
                         "a quarter of an hour", "two and a half hours", "a couple of minutes"))
        hours = self.between(1, 12)
        h = "one hour" if hours == 1 else f"{number_words(hours)} hours"
        if kind < 10:
            return h
        minutes = self.between(1, 59)
        return f"{h} and {number_words(minutes)} minute{'' if minutes == 1 else 's'}"

    def percent(self) -> str:
        return f"{number_words(self.between(1, 20) * 5 if self.chance(0.7) else self.between(1, 100))} percent"

    def temperature(self) -> str:
        return f"{number_words(self.between(58, 82))} degrees"

    def phone(self) -> str:
        """A phone number read digit by digit, in groups, "oh" or "zero" for 0."""
        zero = self(("oh", "zero"))
        digits = lambda k: " ".join(zero if d == 0 else _ONES[d] for d in (self.between(0, 9) for _ in range(k)))
        return f"{digits(3)}, {digits(3)}, {digits(4)}"

    def item_list(self) -> str:
        first = self(SHOPPING)
        if self.chance(0.6):
            return first
        second = self(SHOPPING)
        return first if second == first else f"{first} and {second}"


# ---------------------------------------------------------------------------------------------
# intents: each returns one sentence (engine input, without the final punctuation mark, and
# whether it is a question)


def _alarm(p: _Picker) -> tuple[str, bool]:
    t, d = p.time(), p.day()
    opt_day = f" {d}" if p.chance(0.4) else ""
    forms = (
        lambda: (f"set an alarm for {t}{opt_day}", False),
        lambda: (f"wake me up at {t}{opt_day}", False),
        lambda: (f"set an alarm {d} at {t}", False),
        lambda: (f"create an alarm for {t} called {p(TASKS)}", False),
        lambda: (f"please set my alarm for {t}", False),
        lambda: (f"cancel my {t} alarm", False),
        lambda: (f"turn off my alarm for {d}", False),
        lambda: (f"snooze for {number_words(p.between(2, 15))} minutes", False),
        lambda: (f"what alarms do I have {d}", True),
        lambda: (f"change my {p.clock()} alarm to {t}", False),
        lambda: (f"set a repeating alarm for {t} {p(('on weekdays', 'every day', 'on weekends'))}", False),
        lambda: (f"is my alarm set {d}", True),
    )
    return p(forms)()


def _timer(p: _Picker) -> tuple[str, bool]:
    dur, food = p.duration(), p(FOODS)
    forms = (
        lambda: (f"set a timer for {dur}", False),
        lambda: (f"set a {dur} timer", False),
        lambda: (f"set a timer for {dur} for the {food}", False),
        lambda: (f"start a {food} timer for {dur}", False),
        lambda: (f"how much time is left on the {food} timer", True),
        lambda: (f"how much time is left on my timer", True),
        lambda: (f"add {dur} to the timer", False),
        lambda: (f"cancel the {food} timer", False),
        lambda: (f"pause the timer", False),
        lambda: (f"timer for {dur}", False),
        lambda: (f"count down from {number_words(p.between(10, 100))}", False),
        lambda: (f"start a stopwatch", False),
    )
    return p(forms)()


def _reminder(p: _Picker) -> tuple[str, bool]:
    task = p(TASKS)
    when = p((f"at {p.time()}", f"{p.day()} at {p.time()}", f"in {p.duration()}", f"{p.day()}",
              f"on {p.date()}", "when I get home", "when I leave work", "tonight before bed"))
    forms = (
        lambda: (f"remind me to {task} {when}", False),
        lambda: (f"remind me {when} to {task}", False),
        lambda: (f"set a reminder to {task} {when}", False),
        lambda: (f"don't let me forget to {task} {when}", False),
        lambda: (f"what are my reminders {p.day()}", True),
        lambda: (f"delete the reminder to {task}", False),
        lambda: (f"remind me to call {p.contact()} {when}", False),
    )
    return p(forms)()


def _calendar(p: _Picker) -> tuple[str, bool]:
    event = p((*EVENTS, f"lunch with {p.contact()}", f"a meeting with {p.contact()}",
               f"dinner with {p.contact()}", f"a flight to {p(CITIES)}"))
    forms = (
        lambda: (f"add {event} to my calendar on {p.date()} at {p.time()}", False),
        lambda: (f"schedule {event} for {p.day()} at {p.time()}", False),
        lambda: (f"what's on my calendar {p.day()}", True),
        lambda: (f"when is my next meeting", True),
        lambda: (f"move {event} to {p.time()}", False),
        lambda: (f"cancel {event} {p.day()}", False),
        lambda: (f"do I have anything on {p.date()}", True),
        lambda: (f"what day of the week is {p(MONTHS)} {ordinal_words(p.between(1, 31))}", True),
        lambda: (f"how many days until {p(HOLIDAYS)}", True),
        lambda: (f"what's the date {p(('today', 'tomorrow', 'next Friday', 'this Sunday', 'next Monday'))}", True),
        lambda: (f"when is {event}", True),
    )
    return p(forms)()


def _call(p: _Picker) -> tuple[str, bool]:
    who = p.contact()
    forms = (
        lambda: (f"call {who}", False),
        lambda: (f"call {who} {p(('on speaker', 'at home', 'at work', 'on their cell phone', 'on video'))}", False),
        lambda: (f"video call {who}", False),
        lambda: (f"dial {p.phone()}", False),
        lambda: (f"call the nearest {p(BUSINESSES)}", False),
        lambda: (f"call {who} back", False),
        lambda: (f"who called me {p(('today', 'this morning', 'yesterday', 'last night'))}", True),
        lambda: (f"did {who} call me", True),
        lambda: (f"redial the last number", False),
        lambda: (f"add {p(FIRST_NAMES)} {p(SURNAMES)} to my contacts", False),
    )
    return p(forms)()


def _message(p: _Picker) -> tuple[str, bool]:
    who, msg = p.contact(), p((*MESSAGES, f"I'll be there at {p.time()}", f"meet me at {p(PLACES)}",
                               f"the meeting moved to {p.time()}", f"I'll be home {p.day()}"))
    forms = (
        lambda: (f"text {who} {msg}", False),
        lambda: (f"send a message to {who} saying {msg}", False),
        lambda: (f"tell {who} {msg}", False),
        lambda: (f"send {who} a text that says {msg}", False),
        lambda: (f"read my new messages", False),
        lambda: (f"read my messages from {who}", False),
        lambda: (f"reply {msg}", False),
        lambda: (f"email {who} that {msg}", False),
        lambda: (f"did {who} text me {p(('today', 'back', 'this morning'))}", True),
    )
    return p(forms)()


def _music(p: _Picker) -> tuple[str, bool]:
    what = p((*GENRES, *ARTISTS, f"my {p(PLAYLISTS)} playlist", f"songs by {p(ARTISTS)}", f"some {p(GENRES)}"))
    room = p(ROOMS)
    forms = (
        lambda: (f"play {what}", False),
        lambda: (f"play {what} in the {room}", False),
        lambda: (f"play {what} on the {room} speaker", False),
        lambda: (f"put on {what}", False),
        lambda: (f"shuffle songs by {p(ARTISTS)}", False),
        lambda: (f"skip this song", False),
        lambda: (f"go back to the previous song", False),
        lambda: (f"pause the music in the {room}", False),
        lambda: (f"turn the volume {p(('up', 'down'))}", False),
        lambda: (f"set the volume to {number_words(p.between(1, 10))}", False),
        lambda: (f"turn it {p(('up', 'down'))} to {p.percent()}", False),
        lambda: (f"what song is this", True),
        lambda: (f"who sings this song", True),
        lambda: (f"add this song to my {p(PLAYLISTS)} playlist", False),
        lambda: (f"stop the music in {p.duration()}", False),
        lambda: (f"play the latest news", False),
    )
    return p(forms)()


def _weather(p: _Picker) -> tuple[str, bool]:
    city, day = p(CITIES), p(("today", "tomorrow", "tonight", "this weekend", "on Saturday", "next week",
                               f"on {p(WEEKDAYS)}", "this afternoon", "tomorrow morning", "right now"))
    where = f" in {city}" if p.chance(0.6) else ""
    forms = (
        lambda: (f"what's the weather{where} {day}", True),
        lambda: (f"what's the forecast for {city} {day}", True),
        lambda: (f"will it rain{where} {day}", True),
        lambda: (f"is it going to snow{where} {day}", True),
        lambda: (f"how hot will it be{where} {day}", True),
        lambda: (f"how cold is it{where} {day}", True),
        lambda: (f"what's the temperature{where} {day}", True),
        lambda: (f"do I need {p(('a jacket', 'an umbrella', 'sunscreen', 'a coat'))} {day}", True),
        lambda: (f"when is sunset{where} {day}", True),
        lambda: (f"what time does the sun rise{where} {day}", True),
        lambda: (f"how windy is it{where} {day}", True),
        lambda: (f"what's the humidity in {city}", True),
        lambda: (f"will it be sunny in {city} {day}", True),
        lambda: (f"what's the air quality{where} {day}", True),
    )
    return p(forms)()


def _home(p: _Picker) -> tuple[str, bool]:
    room, device, onoff = p(ROOMS), p(DEVICES), p(("on", "off"))
    the_device = f"the {room} {device}" if p.chance(0.5) else f"the {device} in the {room}"
    forms = (
        lambda: (f"turn {onoff} {the_device}", False),
        lambda: (f"switch {onoff} {the_device}", False),
        lambda: (f"turn {the_device} {onoff}", False),
        lambda: (f"turn {onoff} {the_device} at {p.time()}", False),
        lambda: (f"turn {onoff} {the_device} in {p.duration()}", False),
        lambda: (f"dim the {room} lights to {p.percent()}", False),
        lambda: (f"set the {room} lights to {p.percent()}", False),
        lambda: (f"make the {room} lights {p(COLOURS)}", False),
        lambda: (f"set the thermostat to {p.temperature()}", False),
        lambda: (f"set the {room} to {p.temperature()}", False),
        lambda: (f"turn the heat {p(('up', 'down'))} "
                 f"{p(('a little', 'by two degrees', 'by three degrees', 'in the ' + room))}", False),
        lambda: (f"what's the temperature in the {room}", True),
        lambda: (f"{p(('lock', 'unlock', 'close', 'open'))} the {p(DOORS)}", False),
        lambda: (f"is the {p(DOORS)} locked", True),
        lambda: (f"{p(('close', 'open'))} the {room} blinds", False),
        lambda: (f"start the {p(APPLIANCES)}", False),
        lambda: (f"how long until the {p(APPLIANCES)} is done", True),
        lambda: (f"turn off all the lights{p(('', ' downstairs', ' upstairs', ' in the house'))}", False),
        lambda: (f"set the fan to {p(('low', 'medium', 'high'))}", False),
        lambda: (f"start the robot vacuum in the {room}", False),
        lambda: (f"is the {device} in the {room} on", True),
        lambda: (f"preheat the oven to {number_words(p.between(7, 90) * 5)} degrees", False),
    )
    return p(forms)()


def _shopping(p: _Picker) -> tuple[str, bool]:
    items = p.item_list()
    forms = (
        lambda: (f"add {items} to my shopping list", False),
        lambda: (f"put {items} on the grocery list", False),
        lambda: (f"remove {p(SHOPPING)} from my shopping list", False),
        lambda: (f"what's on my shopping list", True),
        lambda: (f"do I have {p(SHOPPING)} on my list", True),
        lambda: (f"add {number_words(p.between(2, 12))} {p(PACKAGED)} to the list", False),
        lambda: (f"order more {p(SHOPPING)}", False),
    )
    return p(forms)()


def _info(p: _Picker) -> tuple[str, bool]:
    a, b = p.between(2, 99), p.between(2, 20)
    units = p(CONVERSIONS)
    forms = (
        lambda: (f"what time is it in {p(CITIES)}", True),
        lambda: (f"how long does it take to drive to {p(CITIES)}", True),
        lambda: (f"how far is {p(CITIES)} from {p(CITIES)}", True),
        lambda: (f"navigate to {p(PLACES)}", False),
        lambda: (f"take me to {number_words(p.between(1, 999))} {p(STREETS)}", False),
        lambda: (f"find a {p(BUSINESSES)} near {p(STREETS)}", False),
        lambda: (f"how long will it take to get to {p(PLACES)}", True),
        lambda: (f"what's {number_words(a)} {p(('plus', 'minus', 'times'))} {number_words(b)}", True),
        lambda: (f"what's {number_words(b * p.between(2, 999 // b))} divided by {number_words(b)}", True),
        lambda: (f"convert {number_words(p.between(1, 100))} {units[0]} to {units[1]}", False),
        lambda: (f"how many {units[1]} are in {number_words(p.between(1, 20))} {units[0]}", True),
        lambda: (f"what's {number_words(p.between(1, 20) * 5)} percent of {number_words(p.between(2, 400))}", True),
        lambda: (f"is {p(PLACES)} open {p(('now', 'today', 'tomorrow', 'on Sunday'))}", True),
        lambda: (f"how's the traffic to {p(PLACES)}", True),
    )
    return p(forms)()


# Weights: roughly how often each intent is asked of an assistant; alarms, timers, music,
# weather and smart-home control dominate real traffic.
INTENTS: dict[str, tuple[Callable[[_Picker], tuple[str, bool]], float]] = {
    "alarm": (_alarm, 12.0), "timer": (_timer, 10.0), "reminder": (_reminder, 8.0), "calendar": (_calendar, 6.0),
    "call": (_call, 7.0), "message": (_message, 7.0), "music": (_music, 12.0), "weather": (_weather, 10.0),
    "home": (_home, 14.0), "shopping": (_shopping, 5.0), "info": (_info, 9.0),
}


def _engine_text(body: str, question: bool) -> str:
    """Sentence case and a final mark, which the engines turn into falling or rising prosody."""
    # "... a.m." already ends with its period.
    return body[0].upper() + body[1:] + ("?" if question else "" if body.endswith(".") else ".")


@functools.lru_cache(maxsize=4)
def _command_sentences(seed: int, n: int) -> tuple[str, ...]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    pick = _Picker(rng)
    names = list(INTENTS)
    weights = np.array([INTENTS[k][1] for k in names])
    cum = np.cumsum(weights / weights.sum())
    out: list[str] = []
    seen: set[str] = set()
    draws = 0
    while len(out) < n:
        # Bounded, so a grammar too small for n fails loudly instead of looping forever.
        if draws == 50 * n:
            raise RuntimeError(f"the command grammar gave only {len(out)} distinct sentences in {draws} draws, "
                               f"fewer than the {n} asked for")
        draws += 1
        intent = names[min(int(np.searchsorted(cum, rng.random(), side="right")), len(names) - 1)]
        body, question = INTENTS[intent][0](pick)
        text = _engine_text(" ".join(body.split()), question)
        norm = normalize_transcript(text)
        if len(norm.split()) < MIN_WORDS or norm in seen:
            continue
        seen.add(norm)
        out.append(text)
    return tuple(out)


def command_sentences(seed: int, n: int = COMMAND_SENTENCES) -> list[str]:
    """``n`` distinct voice-assistant commands (engine input), a deterministic function of ``seed``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, not {n}")
    return list(_command_sentences(seed, n))
